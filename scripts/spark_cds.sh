#!/usr/bin/env bash
# Builds the class-data sharing archive of Spark's driver JVM: $TFHUB_SPARK_CDS (default var/spark-cds/driver.jsa).
#
# A short Spark job spends most of its JVM's CPU loading and verifying Spark's classes. Java 17 can dump the classes
# a run loaded into an archive (-XX:ArchiveClassesAtExit) that later JVMs map instead
# (-XX:SharedArchiveFile, set in config/embedded/variables.json's spark.driver.extraJavaOptions): measured here, a
# spark-submit of a trivial job costs about 10 CPU-seconds with it against 16 without. An archive that does not
# match (another JDK build, another class path: the jars of another Spark, HADOOP_CONF_DIR on the class path) or
# is missing is ignored by the JVM, which then loads the classes as before: it never changes what a job does.
# Rebuilt when the venv changes (make), or by hand: `rm var/spark-cds/driver.jsa && make spark-cds`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
archive="$TFHUB_SPARK_CDS"
mkdir -p "$(dirname "$archive")"
tmp="$(dirname "$archive")/.$(basename "$archive").$$"
log="$(dirname "$archive")/build.log"
trap 'rm -f "$tmp"' EXIT
# The class path must be the one the jobs' drivers get: the embedded default's (no HADOOP_CONF_DIR, no extra jars).
env -u HADOOP_CONF_DIR -u YARN_CONF_DIR -u SPARK_DIST_CLASSPATH spark-submit --master 'local[2]' \
  --conf spark.ui.showConsoleProgress=false \
  --conf "spark.pyspark.python=$PROJECT_ROOT/.venv/bin/python" \
  --conf "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit=$tmp -Xlog:cds=error" \
  "$PROJECT_ROOT/scripts/spark_cds_workload.py" >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
[ -s "$tmp" ] || { echo "spark-cds: the JVM wrote no archive; see $log" >&2; exit 1; }
mv -f "$tmp" "$archive"
echo "Spark driver class-data sharing archive: $archive ($(du -h "$archive" | cut -f1))"
