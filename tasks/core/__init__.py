"""What every stage shares: the names of the files of a run folder and a dataset (``run_folder``), the partition
and version rule (``partition``), the process environment of a job (``runtime``), the prepared dataset's schema and
manifest (``schema``) and the report plots (``plots``)."""
