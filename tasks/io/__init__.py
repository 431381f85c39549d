"""Where bytes live and how they are committed: the storage URLs and reading them over ``file://`` and ``hdfs://``
(``storage``), the one commit protocol every writer uses (``commit``), the WebHDFS client with namenode HA
(``webhdfs``; its requests, retries and failover in ``webhdfs_protocol``), and the attempt fence every commit
checks (``fencing``)."""
