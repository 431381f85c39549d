"""Data prep as a library. What it reads: the raw layouts and how they are listed (``layouts``; ``table_layout``
for a Spark SQL table), named from the config (``inputs``). How: the plan of label ids, splits and shards
(``plan``), the Spark job (``shard_job``) of work units that check and encode a shard (``prep_tasks``), with the
per-record checks (``image_check``), the task types (``modality``) and TFRecord encoding (``tfrecord``). What it
writes beside the shards: quarantine, statistics and drift (``outputs``, ``prep_stats``), the label vocabulary
(``vocabulary``). The ``prepare_examples`` application drives them; ``score_partition`` reads its raw input
through the same modules."""
