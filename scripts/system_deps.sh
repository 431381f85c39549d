#!/usr/bin/env bash
# Debian packages a fresh machine lacks: libkrb5-dev (the HDFS provider builds gssapi/krb5 on Python 3.11), a
# Java runtime for Spark, docker-compose (its `config` command validates docker-compose.yaml in the tests; no
# Docker engine is needed for that), and Chromium with its driver for the browser test of the Airflow UI.
# Installs only what is missing.
set -euo pipefail
missing=()
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
