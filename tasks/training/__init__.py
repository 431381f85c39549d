"""Fine-tuning as a library: the Keras model and its input (``model``), hub module handling (``hub_module``), the
input streamed from storage (``streamed_input``), the log relay from barrier workers (``logrelay``), and the
barrier stage: its pre-flight checks (``preflight``), one worker (``worker``), the training state on storage
(``checkpoints``) and the driver that launches and relaunches it (``driver``). The ``finetune`` application
drives them."""
