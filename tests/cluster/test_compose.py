"""The cluster mode's docker-compose stack is complete and consistent with the DAG, the Hadoop configuration and
config/cluster/.

Nothing here starts a container (the development machines have no Docker engine): the stack is parsed, checked
against the files it names, and validated by `docker-compose config`.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
HADOOP_CONF = ROOT / "docker" / "hadoop" / "conf"
CLUSTER_CONFIG = ROOT / "config" / "cluster"
NODEMANAGER_DOCKERFILE = ROOT / "docker" / "nodemanager" / "Dockerfile"

#: A pinned tag: a version with at least major.minor (``3.4.1``, ``16.9``, ``3.11.13-slim-bookworm``).
PINNED_TAG = re.compile(r"^\d+\.\d+")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def hadoop_conf(name: str) -> dict[str, str]:
    tree = ET.parse(HADOOP_CONF / name)
    return {p.findtext("name").strip(): p.findtext("value").strip() for p in tree.getroot().iter("property")}


def completed_targets(services) -> set[str]:
    """Services something waits on to finish: the one-shot init services."""
    return {target for svc in services.values() for target, cond in (svc.get("depends_on") or {}).items()
            if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"}


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts; named volumes are left out."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                mounts.append((ROOT / vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target))
    return mounts


def host_path(service: dict, container_path: str) -> Path:
    """The host file or folder a service sees at ``container_path`` through its bind mounts."""
    best = None
    for host, target in bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (host, target)
    assert best is not None, f"{container_path} is not bind-mounted from the repository"
    host, target = best
    return host / container_path[len(target):].lstrip("/")


def dockerfile_of(service: dict) -> tuple[Path, Path]:
    build = service["build"]
    context = (ROOT / build["context"]).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def init_service(services) -> tuple[str, dict]:
    """The service that creates Airflow's connections, Variable and pool (scripts/setup_airflow.sh)."""
    found = [(name, svc) for name, svc in services.items()
             if any("scripts/setup_airflow.sh" in part for part in
                    [*(svc.get("command") or []), *(svc.get("entrypoint") or [])])]
    assert len(found) == 1, f"one service must run scripts/setup_airflow.sh, found {[n for n, _ in found]}"
    return found[0]


def render(path: Path, storage_root: str) -> dict:
    """A config/cluster file as scripts/setup_airflow.sh imports it (its placeholders filled)."""
    text = path.read_text().replace("@PROJECT_ROOT@", str(ROOT)).replace("@STORAGE_ROOT@", storage_root)
    return json.loads(text)


def cluster_config(services) -> tuple[dict, dict, dict, dict]:
    """The init service's environment and the connections, variables and pools it imports."""
    _, svc = init_service(services)
    env = svc["environment"]
    config_dir = host_path(svc, env["TFHUB_CONFIG_DIR"])
    assert config_dir == CLUSTER_CONFIG, f"the init service imports {config_dir}, not config/cluster/"
    root = env["TFHUB_STORAGE_ROOT"]
    return (env, render(config_dir / "connections.json", root), render(config_dir / "variables.json", root),
            render(config_dir / "pools.json", root))


# ---------------------------------------------------------------------------------------------------------------
# Images


def test_every_image_is_pinned_or_built_here(services):
    built = 0
    for name, svc in services.items():
        if "build" in svc:
            context, dockerfile = dockerfile_of(svc)
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            assert dockerfile.is_relative_to(ROOT / "docker"), f"{name}: Dockerfiles live under docker/"
            built += 1
            continue
        image = svc.get("image")
        assert image, f"{name}: neither build nor image"
        assert "$" not in image, f"{name}: image {image!r} depends on the environment"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and PINNED_TAG.match(tag), f"{name}: image {image!r} is not pinned to a version"
    assert built >= 2  # tfhub-airflow and tfhub-nodemanager


def test_dockerfiles_pin_their_bases_and_copy_files_that_exist(services):
    for name, svc in services.items():
        if "build" not in svc:
            continue
        context, dockerfile = dockerfile_of(svc)
        lines = dockerfile.read_text().replace("\\\n", " ").splitlines()
        stages = set()
        for line in lines:
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0].upper() == "FROM":
                image = words[1]
                if image in stages:
                    continue
                repo, _, tag = image.rpartition(":")
                assert repo and tag != "latest" and PINNED_TAG.match(tag), f"{dockerfile}: FROM {image} is not pinned"
                if len(words) >= 4 and words[2].upper() == "AS":
                    stages.add(words[3])
            elif words[0].upper() in ("COPY", "ADD"):
                args = [w for w in words[1:] if not w.startswith("--")]
                if any(w.startswith("--from=") for w in words[1:]):
                    continue
                for source in args[:-1]:
                    assert (context / source).exists(), f"{dockerfile}: {words[0]} source {source} does not exist"


def test_airflow_image_installs_the_project_requirements(services):
    _, svc = init_service(services)
    _, dockerfile = dockerfile_of(svc)
    text = dockerfile.read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11\b", text, re.M)
    assert re.search(r"pip install .*-r \S*requirements\.txt\s+(\\\s+)?-c \S*constraints\.txt", text)
    assert re.search(r"pip install .*--no-deps -r \S*requirements-nodeps\.txt", text)
    assert "default-jre-headless" in text and "HADOOP_CONF_DIR" in text
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in env, f"{name}: requirements belong in the image"


# ---------------------------------------------------------------------------------------------------------------
# What the DAG needs, and what the init service creates


def dag_requirements() -> tuple[set[str], set[str], set[str]]:
    """Connection ids, Variable keys and pools used by the DAGs in dags/.

    From the parsed DAGs (every ``*conn_id`` attribute of every task, ``pipeline_variable``, pools, and
    ``var.*``/``conn.*`` in templated fields) and from the DAG files' source (``*_CONN_ID``/``*_POOL`` constants
    and template strings, which also covers what a ``@task`` body passes on).
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    conns: set[str] = set()
    variables: set[str] = set()
    pools: set[str] = set()
    template_ref = re.compile(r"\b(var\.(?:json|value)|conn)\.([A-Za-z_][A-Za-z0-9_]*)")

    def scan(value):
        if isinstance(value, str):
            for kind, key in template_ref.findall(value):
                (conns if kind == "conn" else variables).add(key)
        elif isinstance(value, dict):
            for v in value.values():
                scan(v)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                scan(v)

    for dag in bag.dags.values():
        for task in dag.tasks:
            for attr, value in vars(task).items():
                if attr.lstrip("_").endswith("conn_id") and isinstance(value, str) and value:
                    conns.add(value)
            if getattr(task, "pipeline_variable", None):
                variables.add(task.pipeline_variable)
            if task.pool and task.pool != "default_pool":
                pools.add(task.pool)
            for field in task.template_fields:
                scan(getattr(task, field, None))

    for path in (ROOT / "dags").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("CONN_ID"):
                        conns.add(node.value.value)
                    elif isinstance(target, ast.Name) and target.id.endswith("POOL"):
                        pools.add(node.value.value)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                scan(node.value)
    return conns, variables, pools


def test_init_creates_every_connection_variable_and_pool_the_dags_use(services):
    conns, variables, pools = dag_requirements()
    # The derivation itself must find what the pipeline is known to use, or this test would check nothing.
    assert {"spark_tfhub", "webhdfs_tfhub"} <= conns
    assert "tfhub_pipeline" in variables
    assert "tfhub_training" in pools
    _, connections, var_file, pool_file = cluster_config(services)
    assert conns <= set(connections), f"connections missing from config/cluster: {sorted(conns - set(connections))}"
    assert variables <= set(var_file), f"variables missing from config/cluster: {sorted(variables - set(var_file))}"
    assert pools <= set(pool_file), f"pools missing from config/cluster: {sorted(pools - set(pool_file))}"
    for pool in pools:
        assert pool_file[pool]["slots"] >= 1


def test_init_service_reuses_the_setup_script_with_the_cluster_config(services):
    name, svc = init_service(services)
    script = host_path(svc, "/opt/airflow/scripts/setup_airflow.sh")
    assert script == ROOT / "scripts" / "setup_airflow.sh" and script.is_file()
    text = script.read_text()
    assert "TFHUB_CONFIG_DIR" in text and "TFHUB_STORAGE_ROOT" in text
    env = svc["environment"]
    assert urlparse(env["TFHUB_STORAGE_ROOT"]).scheme == "hdfs"
    # Airflow's components wait for it.
    for other in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert services[other]["depends_on"][name] == {"condition": "service_completed_successfully"}


def test_connections_and_variable_name_the_stack(services):
    env, connections, variables, _ = cluster_config(services)
    core, hdfs, yarn = hadoop_conf("core-site.xml"), hadoop_conf("hdfs-site.xml"), hadoop_conf("yarn-site.xml")
    default_fs = urlparse(core["fs.defaultFS"])
    namenode_http = hdfs["dfs.namenode.http-address"]

    spark = connections["spark_tfhub"]
    assert spark["conn_type"] == "spark" and spark["host"] == "yarn"
    assert spark["extra"]["deploy-mode"] == "cluster"
    rm_web = urlparse(spark["extra"]["yarn_resourcemanager_webapp_address"])
    assert rm_web.netloc == yarn["yarn.resourcemanager.webapp.address"]
    assert rm_web.hostname in services
    queues = hadoop_conf("capacity-scheduler.xml")["yarn.scheduler.capacity.root.queues"].split(",")
    assert spark["extra"]["queue"] in queues

    webhdfs = connections["webhdfs_tfhub"]
    assert webhdfs["conn_type"] == "webhdfs"
    assert f"{webhdfs['host']}:{webhdfs['port']}" == namenode_http and webhdfs["host"] in services

    pipeline = variables["tfhub_pipeline"]
    root = urlparse(pipeline["storage_root"])
    assert pipeline["storage_root"] == env["TFHUB_STORAGE_ROOT"]
    assert (root.scheme, root.netloc) == (default_fs.scheme, default_fs.netloc)
    conf = pipeline["spark_conf"]
    # The jobs' WebHDFS address is derived from the connection by the operators, never written a second time.
    from airflow.models.connection import Connection

    from tfhub_spark.hooks.storage import webhdfs_urls

    assert webhdfs_urls(Connection(conn_id="webhdfs_tfhub", **webhdfs)) == [f"http://{namenode_http}"]
    assert not [k for k in conf if "TFHUB_WEBHDFS_URL" in k or "TFHUB_WEBHDFS_USER" in k]
    for key in ("spark.yarn.archive", "spark.eventLog.dir"):
        url = urlparse(conf[key])
        assert (url.scheme, url.netloc) == (default_fs.scheme, default_fs.netloc), key
    assert pipeline["submit_options"]["yarn_track_via_rm_api"] is True


def test_storage_root_and_hdfs_folders_are_made_by_hdfs_init(services):
    env, _, variables, _ = cluster_config(services)
    svc = services["hdfs-init"]
    assert svc["environment"]["TFHUB_STORAGE_ROOT"] == env["TFHUB_STORAGE_ROOT"]
    assert svc["environment"]["DEMO_DS"] == services["demo-inputs"]["environment"]["DEMO_DS"]
    script = host_path(svc, svc["command"][-1])
    text = script.read_text()
    conf = variables["tfhub_pipeline"]["spark_conf"]
    for key in ("spark.yarn.archive", "spark.eventLog.dir"):
        folder = urlparse(conf[key]).path
        folder = folder if key == "spark.eventLog.dir" else folder.rsplit("/", 1)[0]
        assert re.search(rf"-mkdir -p [^\n]*{re.escape(folder)}\b", text.replace("\\\n", " ")), \
            f"hdfs_init.sh does not create {folder} ({key})"
    history_opts = services["spark-history"]["environment"]["SPARK_HISTORY_OPTS"]
    assert f"-Dspark.history.fs.logDirectory={conf['spark.eventLog.dir']}" in history_opts.split()
    remote_logs = hadoop_conf("yarn-site.xml")["yarn.nodemanager.remote-app-log-dir"]
    assert re.search(rf"-mkdir -p [^\n]*{re.escape(remote_logs)}\b", text.replace("\\\n", " "))


def test_spark_archive_matches_the_client_spark_version():
    requirements = (ROOT / "requirements.txt").read_text()
    pyspark = re.search(r"^pyspark==(\S+)", requirements, re.M).group(1)
    variables = render(CLUSTER_CONFIG / "variables.json", "hdfs://namenode:8020/tfhub")
    archive = urlparse(variables["tfhub_pipeline"]["spark_conf"]["spark.yarn.archive"]).path
    assert archive.endswith(f"/spark-jars-{pyspark}.zip"), \
        f"spark.yarn.archive {archive} is not the archive demo_inputs.sh makes from pyspark {pyspark}"
    assert "spark_jars_archive.py" in (ROOT / "docker" / "init" / "demo_inputs.sh").read_text()


def test_spark_jars_archive_holds_the_jars_at_its_root(tmp_path):
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in ("spark-core_2.13-4.2.0.jar", "hadoop-client-api-3.5.0.jar"):
        (jars / name).write_bytes(b"PK-jar-" + name.encode())
    (jars / "README.txt").write_text("not a jar")
    out = tmp_path / "out"
    script = ROOT / "docker" / "init" / "spark_jars_archive.py"
    run = [sys.executable, str(script), str(out), "--jars-dir", str(jars), "--version", "4.2.0"]
    res = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    archive = out / "spark-jars-4.2.0.zip"
    assert res.stdout.strip() == str(archive)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["hadoop-client-api-3.5.0.jar", "spark-core_2.13-4.2.0.jar"]
        assert zf.read("spark-core_2.13-4.2.0.jar") == b"PK-jar-spark-core_2.13-4.2.0.jar"
    assert sorted(p.name for p in out.iterdir()) == ["spark-jars-4.2.0.zip"]  # no temporary left
    before = archive.stat().st_mtime_ns
    assert subprocess.run(run, capture_output=True, text=True, timeout=60).returncode == 0
    assert archive.stat().st_mtime_ns == before  # kept, not rewritten
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "o2"), "--jars-dir", str(empty),
                          "--version", "4.2.0"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "no .jar files" in res.stderr


def test_executor_python_is_the_nodemanager_environment(services):
    text = NODEMANAGER_DOCKERFILE.read_text()
    env_dir = re.search(r"^ARG TFHUB_ENV=(\S+)", text, re.M).group(1)
    assert re.search(r"python -m venv \$\{TFHUB_ENV\}", text)
    variables = render(CLUSTER_CONFIG / "variables.json", "hdfs://namenode:8020/tfhub")
    conf = variables["tfhub_pipeline"]["spark_conf"]
    assert conf["spark.pyspark.python"] == f"{env_dir}/bin/python"
    assert conf["spark.pyspark.driver.python"] == f"{env_dir}/bin/python"
    _, dockerfile = dockerfile_of(services["nodemanager"])
    assert dockerfile == NODEMANAGER_DOCKERFILE


def test_executor_environment_covers_every_import_of_the_jobs():
    """Each third-party module imported under tasks/ comes from a distribution the NodeManager image installs
    (listed, or a dependency of a listed one); pyspark is shipped by spark-submit."""
    listed = set()
    for req in (ROOT / "docker" / "nodemanager" / "executor-requirements.txt",
                ROOT / "requirements-nodeps.txt"):
        for line in req.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                listed.add(canonical(re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0]))
    constrained = {canonical(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
                   if "==" in line and not line.startswith("#")}
    assert listed <= constrained, f"not pinned by constraints.txt: {sorted(listed - constrained)}"

    installed = closure(listed)
    providers = metadata.packages_distributions()
    missing = {}
    for module in third_party_imports(ROOT / "tasks"):
        if module in ("pyspark", "py4j"):  # spark-submit ships pyspark.zip and py4j to containers
            continue
        dists = {canonical(d) for d in providers.get(module, [])}
        assert dists, f"tasks/ imports {module}, which no installed distribution provides"
        if not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, f"the executors' environment lacks {missing}: add them to executor-requirements.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(canonical(re.split(r"[<>=!~\[;\s(]", req, maxsplit=1)[0]))
    return seen


def third_party_imports(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("tasks", "__future__")}


# ---------------------------------------------------------------------------------------------------------------
# Mounts, Hadoop configuration, health and start order


def test_every_bind_mount_exists_and_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for host, target in bind_mounts(svc):
            assert host.exists(), f"{name}: bind mount {host} -> {target} does not exist"
            assert host.is_relative_to(ROOT), f"{name}: {host} is outside the repository"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if isinstance(source, str) and not source.startswith((".", "/")):
                assert source in declared, f"{name}: named volume {source} is not declared"


def test_hadoop_configuration_names_compose_services(services):
    core, hdfs, yarn = hadoop_conf("core-site.xml"), hadoop_conf("hdfs-site.xml"), hadoop_conf("yarn-site.xml")
    default_fs = urlparse(core["fs.defaultFS"])
    rm_host = yarn["yarn.resourcemanager.hostname"]
    assert default_fs.scheme == "hdfs"
    for host in (default_fs.hostname, rm_host, hdfs["dfs.namenode.http-address"].split(":")[0],
                 yarn["yarn.resourcemanager.webapp.address"].split(":")[0]):
        assert host in services, f"the Hadoop configuration names {host}, which is no service"
        # Hadoop daemons register and advertise under their own host name: it must be the service name.
        assert services[host].get("hostname") == host, f"service {host} must set hostname: {host}"
    assert hdfs["dfs.namenode.rpc-address"] == default_fs.netloc
    assert services[default_fs.hostname]["command"] == ["hdfs", "namenode"]
    assert services[rm_host]["command"] == ["yarn", "resourcemanager"]
    assert yarn["yarn.resourcemanager.webapp.address"].split(":")[0] == rm_host


def test_services_see_the_repository_hadoop_configuration(services):
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if "HADOOP_CONF_DIR" in env:  # clients: Airflow, the history server
            assert host_path(svc, env["HADOOP_CONF_DIR"]) == HADOOP_CONF, name
        image = svc.get("image", "")
        if image.startswith("apache/hadoop:") or name == "nodemanager":
            targets = {target: host for host, target in bind_mounts(svc)}
            for needed in ("core-site.xml", "hdfs-site.xml"):
                assert targets.get(f"/opt/hadoop/etc/hadoop/{needed}") == HADOOP_CONF / needed, f"{name}: {needed}"
            if svc.get("command", [None])[0] == "yarn":
                assert targets.get("/opt/hadoop/etc/hadoop/yarn-site.xml") == HADOOP_CONF / "yarn-site.xml", name
    rm_mounts = {target for _, target in bind_mounts(services["resourcemanager"])}
    assert "/opt/hadoop/etc/hadoop/capacity-scheduler.xml" in rm_mounts


def test_long_running_services_have_health_checks_and_dependencies_use_conditions(services):
    one_shot = completed_targets(services)
    assert {"demo-inputs", "hdfs-init", "airflow-init"} <= one_shot
    for name, svc in services.items():
        if name in one_shot:
            assert svc.get("restart") == "no", f"{name} runs once: restart must be 'no'"
        else:
            test = (svc.get("healthcheck") or {}).get("test")
            assert test and test != ["NONE"], f"{name} runs for good but has no health check"
        for target, cond in (svc.get("depends_on") or {}).items():
            assert isinstance(cond, dict) and "condition" in cond, f"{name} -> {target}: depends_on without condition"
            assert target in services, f"{name} depends on unknown service {target}"
            if cond["condition"] == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target} to be healthy; it has no check"
            else:
                assert cond["condition"] == "service_completed_successfully", f"{name} -> {target}: {cond}"
    # The scheduler runs spark-submit: it starts once YARN can run containers and HDFS holds the inputs.
    scheduler = services["airflow-scheduler"]["depends_on"]
    assert scheduler["nodemanager"]["condition"] == "service_healthy"
    assert scheduler["hdfs-init"]["condition"] == "service_completed_successfully"


def test_dependencies_have_no_cycle(services):
    state: dict[str, int] = {}

    def visit(name, path):
        if state.get(name) == 1:
            raise AssertionError(f"depends_on cycle: {' -> '.join([*path, name])}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for target in services[name].get("depends_on") or {}:
            visit(target, [*path, name])
        state[name] = 2

    for name in services:
        visit(name, [])


def test_published_ports_listen_on_localhost_only(services):
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is open beyond this machine"
            published[name] = int(str(port).split(":")[2].split("/")[0])
    assert published["namenode"] == 9870 and published["resourcemanager"] == 8088
    assert published["airflow-apiserver"] == 8080 and published["spark-history"] == 18080


def test_docker_compose_validates_the_file():
    """`docker-compose config` (Debian's docker-compose, installed by scripts/system_deps.sh) parses and validates
    the file against its schema without a Docker engine. Missing, it is a failure: CI installs it."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: run `bash scripts/system_deps.sh` (Debian package docker-compose)"
    res = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, f"docker-compose config rejected docker-compose.yaml:\n{res.stdout}{res.stderr}"


# ---------------------------------------------------------------------------------------------------------------
# GPU discovery script

BASH = shutil.which("bash") or "/bin/bash"


@pytest.mark.parametrize("listing, expected", [("0\n1\n", ["0", "1"]), ("3\n", ["3"])])
def test_gpu_discovery_script_prints_spark_resource_json(tmp_path, listing, expected):
    script = ROOT / "docker" / "nodemanager" / "getGpusResources.sh"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    fake.chmod(0o755)
    res = subprocess.run([BASH, str(script)], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, timeout=30)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"name": "gpu", "addresses": expected}


def test_gpu_discovery_script_fails_without_gpus(tmp_path):
    script = ROOT / "docker" / "nodemanager" / "getGpusResources.sh"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    res = subprocess.run([BASH, str(script)], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, timeout=30)
    assert res.returncode != 0 and "no GPU" in res.stderr
    res = subprocess.run([BASH, str(script)], capture_output=True, text=True,
                         env={"PATH": "/nonexistent"}, timeout=30)
    assert res.returncode != 0


def test_gpu_discovery_script_is_where_the_gpu_variables_say():
    variables = render(CLUSTER_CONFIG / "variables.gpu.json", "hdfs://namenode:8020/tfhub")
    path = variables["tfhub_pipeline"]["spark_conf"]["spark.executor.resource.gpu.discoveryScript"]
    assert re.search(rf"^COPY docker/nodemanager/getGpusResources\.sh {re.escape(path)}$",
                     NODEMANAGER_DOCKERFILE.read_text(), re.M)


def test_task_logs_go_to_hdfs_with_the_providers_handler():
    """Airflow's remote logging picks the HDFS provider's HdfsRemoteLogIO for hdfs:// folders; the folder must exist
    on the stack's HDFS and the connection must be one the init service creates."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    env = compose["x-airflow-env"]
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
    folder = env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"]
    assert folder.startswith("hdfs://namenode:")
    conns = json.loads((ROOT / "config/cluster/connections.json").read_text())
    assert conns[env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]]["conn_type"] == "webhdfs"
    path = folder.split("8020", 1)[1]
    assert path in (ROOT / "docker/init/hdfs_init.sh").read_text()
    from airflow.providers.apache.hdfs.log.hdfs_task_handler import HdfsRemoteLogIO  # noqa: F401
