# TF Hub fine-tuning on Spark, orchestrated by Airflow. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
ENV := . scripts/env.sh &&
DEMO_DS ?= 2026-11-20
DEMO_IMAGES ?= 600
DEMO_DOCS ?= 600
# `make demo TASK=text` runs the same DAG as text classification (task_type=text_classification).
TASK ?= image
ifeq ($(TASK),text)
HUB_MODULE := hub/text_embed_64
HUB_BUILDER := tasks.demo.make_text_module
DEMO_DATA = python -m tasks.demo.make_text_dataset --raw-root "$$TFHUB_STORAGE_ROOT/topics/raw" --ds $(DEMO_DS) \
	--num-docs $(DEMO_DOCS) --layout csv
DEMO_ENV := DEMO_DATASET=topics DEMO_MODEL=topics \
	DEMO_CONF='{"task_type": "text_classification", "layout": "csv", "dataset": "topics", "model_name": "topics"}'
else ifeq ($(TASK),image)
HUB_MODULE := hub/shapes_fv_32
HUB_BUILDER := tasks.demo.make_hub_module
DEMO_DATA = python -m tasks.demo.make_dataset --raw-root "$$TFHUB_STORAGE_ROOT/raw" --ds $(DEMO_DS) \
	--num-images $(DEMO_IMAGES)
DEMO_ENV :=
else
$(error TASK=$(TASK): use TASK=image (the default) or TASK=text)
endif
# `make demo SIZE=real` runs the image DAG at real size: the MobileNetV2 1.0 224 module (pre-trained here, a few
# minutes) on JPEG/PNG of 320-640 px, as its own dataset and model (shapes_real); DEMO_REAL_EPOCHS epochs, the module
# at a tenth of the head's learning rate (at the same rate, the batch-norm moving averages lag the weights).
SIZE ?= demo
DEMO_REAL_EPOCHS ?= 4
ifeq ($(SIZE),real)
ifneq ($(TASK),image)
$(error SIZE=real is the image task's; drop TASK=$(TASK))
endif
HUB_MODULE := hub/mobilenet_v2_100_224
HUB_BUILDER := tasks.demo.make_mobilenet_module
DEMO_DATA = python -m tasks.demo.make_dataset --raw-root "$$TFHUB_STORAGE_ROOT/shapes_real/raw" --ds $(DEMO_DS) \
	--num-images $(DEMO_IMAGES) --min-size 320 --max-size 640
DEMO_ENV := DEMO_DATASET=shapes_real DEMO_MODEL=shapes_real \
	DEMO_CONF='{"dataset": "shapes_real", "model_name": "shapes_real", "hub_module": "$(HUB_MODULE)", \
	"epochs": $(DEMO_REAL_EPOCHS), "module_lr_scale": 0.1}'
else ifneq ($(SIZE),demo)
$(error SIZE=$(SIZE): use SIZE=demo (the default, 32x32 module) or SIZE=real (MobileNetV2 at 224x224))
endif
# `make hub-module NAME=mobilenet_v2_100_224` builds the real-size image module (MobileNetV2 1.0 at 224x224).
ifeq ($(NAME),mobilenet_v2_100_224)
HUB_MODULE := hub/mobilenet_v2_100_224
HUB_BUILDER := tasks.demo.make_mobilenet_module
else ifneq ($(NAME),)
$(error NAME=$(NAME): the modules this project builds are the demo's (no NAME) and NAME=mobilenet_v2_100_224)
endif

.PHONY: help setup system-deps venv spark-cds airflow-setup hub-module demo-data demo test bench clean hadoop-up hadoop-down \
	ui tensorboard

help:
	@echo "make demo     set up what is missing, then run the whole DAG on the embedded default"
	@echo "              (TASK=text: the same DAG as text classification; SIZE=real: MobileNetV2 at 224x224)"
	@echo "make test     run the test suite (unit, DAG, end to end)"
	@echo "make bench    run the benchmarks"
	@echo "make setup    only install: system packages, virtualenv, Spark's class-data sharing archive, Airflow home"
	@echo "make hadoop-up / hadoop-down   start / stop a local HDFS + YARN (hadoop/MiniHadoop.java)"
	@echo "make ui       airflow standalone on the project's Airflow home (UI_PORT=8080); prints the URL and login"
	@echo "make tensorboard   TensorBoard on the runs folder of the storage root (TENSORBOARD_PORT=6006)"

system-deps:
	@bash scripts/system_deps.sh

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: this project needs Python 3.11"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-nodeps.txt -c constraints.txt
	touch $(STAMP)

venv: system-deps $(STAMP)

# The class-data sharing archive of Spark's driver JVM (scripts/spark_cds.sh): rebuilt when the venv changes.
SPARK_CDS := var/spark-cds/driver.jsa
$(SPARK_CDS): $(STAMP) scripts/spark_cds.sh scripts/spark_cds_workload.py
	@bash scripts/spark_cds.sh

spark-cds: venv $(SPARK_CDS)

airflow-setup: venv spark-cds
	@bash scripts/setup_airflow.sh

setup: airflow-setup

hub-module: venv
	@$(ENV) root=$${TFHUB_STORAGE_ROOT#file://}; \
	if [ -f "$$root/$(HUB_MODULE)/saved_model.pb" ]; then echo "hub module $$root/$(HUB_MODULE) exists"; \
	else python -m $(HUB_BUILDER) --output "$$TFHUB_STORAGE_ROOT/$(HUB_MODULE)"; fi

demo-data: venv
	@$(ENV) $(DEMO_DATA)

demo: airflow-setup hub-module demo-data
	@$(ENV) $(DEMO_ENV) bash scripts/run_demo.sh $(DEMO_DS)

# Two workers: most of a whole-DAG test keeps one core busy (tests/conftest.py groups what must share a worker).
TEST_WORKERS ?= 2

test: airflow-setup
	@$(ENV) python -m pytest tests -n $(TEST_WORKERS)

bench: venv
	@$(ENV) for b in bench/bench_*.py; do echo "== $$b"; python "$$b" || exit 1; done

# The local Hadoop (HDFS + YARN of Hadoop 3.5.0 in one JVM, hadoop/MiniHadoop.java); see docs/cluster.md.
hadoop-up: venv
	@$(ENV) python -m tests.support.minihadoop up

hadoop-down:
	@$(ENV) python -m tests.support.minihadoop down

# The Airflow UI of the embedded default: scheduler, DAG processor, triggerer and API server in one process.
UI_PORT ?= 8080
ui: airflow-setup
	@$(ENV) export AIRFLOW__API__PORT=$(UI_PORT) AIRFLOW__API__BASE_URL="$${AIRFLOW__API__BASE_URL:-http://localhost:$(UI_PORT)}"; \
	pw="$$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"; \
	echo "Airflow UI: $$AIRFLOW__API__BASE_URL (Airflow home $$AIRFLOW_HOME; Ctrl-C stops it)"; \
	echo "Log in as admin, password in $$pw (generated at the first start and printed below as"; \
	echo "'Password for user admin'); the DAGs start paused: unpause tfhub_finetune, then Trigger."; \
	if [ -f "$$pw" ]; then echo "Password now: $$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$$pw")"; fi; \
	exec airflow standalone

# TensorBoard on every run's event files (runs/ds=*/tensorboard); the finetune task's TensorBoard link opens it when
# the tfhub_pipeline Variable has "tensorboard_url": "http://localhost:6006/?runFilter={run}#timeseries".
TENSORBOARD_PORT ?= 6006
tensorboard: venv
	@$(ENV) logdir="$${TENSORBOARD_LOGDIR:-$${TFHUB_STORAGE_ROOT#file://}/runs}"; mkdir -p "$$logdir"; \
	echo "TensorBoard: http://localhost:$(TENSORBOARD_PORT)/ (logdir $$logdir; Ctrl-C stops it)"; \
	exec tensorboard --logdir "$$logdir" --host 127.0.0.1 --port $(TENSORBOARD_PORT)

clean:
	rm -rf var
