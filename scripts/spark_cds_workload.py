"""The Spark job whose loaded classes make the driver's class-data sharing archive (scripts/spark_cds.sh).

What the project's jobs do in their driver JVM, small: a session, a DataFrame job with a shuffle, Parquet written
and read back, a Python RDD job and a barrier stage. The archive holds every class these load; a job that loads
others still runs, those classes come from the jars as before.
"""

import sys
import tempfile

from pyspark.sql import SparkSession


def main() -> None:
    spark = SparkSession.builder.appName("spark-cds-workload").getOrCreate()
    sc = spark.sparkContext
    df = spark.createDataFrame([(i % 4, f"r{i}", float(i)) for i in range(200)], "k int, id string, x double")
    assert df.groupBy("k").count().count() == 4
    with tempfile.TemporaryDirectory() as tmp:
        df.write.parquet(f"{tmp}/t")
        assert spark.read.parquet(f"{tmp}/t").count() == 200
    assert sc.parallelize(range(100), 2).mapPartitions(lambda it: [sum(it)]).sum() == 4950
    assert sorted(sc.parallelize(range(2), 2).barrier().mapPartitions(lambda it: [len(list(it))]).collect()) == [1, 1]
    spark.stop()
    print("spark-cds workload done", file=sys.stderr)


if __name__ == "__main__":
    main()
