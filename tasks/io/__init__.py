"""Where bytes live and how they are committed: the storage URLs and reading them over ``file://`` and ``hdfs://``
(``storage``), the one commit protocol every writer uses (``commit``), the WebHDFS client with namenode HA
(``webhdfs``), and the attempt fence every commit checks (``fencing``)."""
