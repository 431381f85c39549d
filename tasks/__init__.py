"""The pipeline's jobs, plain Python without Airflow. The modules at this level are the five spark-submit
applications, each ``parse_args`` -> ``Config`` -> ``run``; the library is grouped below them: ``io`` (storage,
the commit protocol, WebHDFS, the attempt fence), ``core`` (run-folder names, partition rule, runtime, schema),
``prep``, ``training`` and ``serving``. ``demo`` makes the demo inputs and is not shipped to the executors."""
