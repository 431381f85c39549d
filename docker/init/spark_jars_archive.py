"""Zips the Spark jars of the installed PySpark for ``spark.yarn.archive``.

With ``spark.yarn.archive`` set to this archive on HDFS, YARN containers take Spark's jars from there (and each
NodeManager caches it once, when it is world-readable) instead of every ``spark-submit`` uploading the client's
~450 MB of jars to its staging folder. The jars must be at the archive's root, and of the same Spark version as
the client that submits: the archive is named ``spark-jars-<version>.zip`` after the PySpark it comes from.

Usage::

    python docker/init/spark_jars_archive.py OUT_DIR        # prints the archive's path
    hdfs dfs -put OUT_DIR/spark-jars-4.2.0.zip /apps/spark/
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path


def build(jars_dir: Path, out_dir: Path, version: str) -> Path:
    """Writes ``out_dir/spark-jars-<version>.zip`` (stored: jars are compressed already) unless it exists.

    The archive is written beside its final name and renamed into place, so an interrupted run leaves no archive
    that looks complete.
    """
    out = out_dir / f"spark-jars-{version}.zip"
    if out.exists():
        return out
    jars = sorted(p for p in jars_dir.iterdir() if p.suffix == ".jar" and p.is_file())
    if not jars:
        raise FileNotFoundError(f"no .jar files in {jars_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for jar in jars:
            zf.write(jar, jar.name)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--jars-dir", type=Path, help="default: the jars of the installed pyspark")
    p.add_argument("--version", help="default: the installed pyspark's version")
    args = p.parse_args(argv)
    if args.jars_dir is None or args.version is None:
        import pyspark

        args.jars_dir = args.jars_dir or Path(pyspark.__file__).parent / "jars"
        args.version = args.version or pyspark.__version__
    print(build(args.jars_dir, args.out_dir, args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
