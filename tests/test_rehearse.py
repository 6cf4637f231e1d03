"""``nixfly run -c fly.toml IMAGE``: a deploy rehearsed on this machine with the real runtimes (runc, bwrap)
and a busybox httpd image. Every assertion is on what the container did (files it wrote, what it served),
the exit code, the one-line findings, or the JSON verdict with its check history.

The containers share this machine's network, so tests that use port 8080 take a lock for it (pytest-xdist
runs tests side by side).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixfly.image import Image
from nixfly.run.checks import machine_address
from nixfly.sinks.layout import write_layout
from nixfly.transports import LayoutLocation
from tests.test_unpack import Entry, busybox_entries, make_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes are exercised as root (as in CI)"),
]

HTTPD = "httpd -f -p {addr} -h /www"
# Fast checks: the rehearsal waits grace + 2 intervals + timeout at most.
CHECK = """
[[http_service.checks]]
grace_period = "1s"
interval = "1s"
timeout = "1s"
method = "GET"
path = "{path}"
"""


def fly_toml(where: Path, body: str, *, app: str = "rehearsal") -> Path:
    path = where / "fly.toml"
    path.write_text(f'app = "{app}"\nprimary_region = "fra"\n{body}')
    return path


def web_service(port: int = 8080, path: str = "/", processes: str = "") -> str:
    procs = f"processes = [{processes}]\n" if processes else ""
    return f"[http_service]\ninternal_port = {port}\n{procs}" + CHECK.format(path=path)


def nixfly(*args: str, cache: Path, timeout: float = 90, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "nixfly", "run", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearse")


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    return work / "cache"


@pytest.fixture(scope="module")
def httpd_image(work: Path) -> Image:
    """busybox with /www/index.html; Cmd serves it on 0.0.0.0:8080 (fly.toml's commands replace the Cmd)."""
    return make_image(
        work / "httpd-blobs",
        [busybox_entries(), [Entry("www", "dir", mode=0o755), Entry("www/index.html", data=b"hello from www\n")]],
        {"Cmd": HTTPD.format(addr="8080").split(), "Env": ["PATH=/bin"]},
    )


@pytest.fixture(scope="module")
def httpd_layout(httpd_image: Image, work: Path) -> Path:
    write_layout(httpd_image, LayoutLocation(work / "httpd-layout", "latest"))
    return work / "httpd-layout"


@pytest.fixture
def port_8080() -> Iterator[None]:
    """The containers share this machine's network: one test at a time may serve 8080."""
    with open("/tmp/nixfly-tests-port-8080.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


@pytest.mark.parametrize("runtime", ["runc", "bwrap"])
def test_a_healthy_app_passes_and_its_check_history_shows_passing(
    runtime: str, httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    toml = fly_toml(tmp_path, web_service())
    r = nixfly("--runtime", runtime, "-c", str(toml), "--json", "--for", "3s", str(httpd_layout), cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] is True and out["duration"] >= 3
    (m,) = out["machines"]
    assert (m["group"], m["runtime"], m["exits"], m["problems"]) == ("app", runtime, [], [])
    assert [x["address"] for x in m["listening"]] == ["0.0.0.0:8080"] or [x["address"] for x in m["listening"]] == [
        "[::]:8080"
    ]
    (check,) = m["checks"]
    assert check["name"] == "servicecheck-00-http-8080"
    assert check["status"] == "passing"
    # Checked on its 1s interval for the 3s watched: every result in the history passing.
    assert [h["status"] for h in check["history"]] == ["passing"] * len(check["history"])
    assert len(check["history"]) >= 2
    assert check["history"][-1]["output"].startswith("GET /: 200 OK")
    assert r.stderr.endswith("nixfly: rehearsal passed\n")


def test_an_app_on_loopback_only_gets_the_probe_line_and_fails(
    httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    toml = fly_toml(tmp_path, f'[processes]\napp = "{HTTPD.format(addr="127.0.0.1:8080")}"\n' + web_service())
    r = nixfly("--runtime", "bwrap", "-c", str(toml), str(httpd_layout), cache=cache)
    assert r.returncode == 1, r.stderr
    probe = [ln for ln in r.stderr.splitlines() if "listens on" in ln]
    assert probe == [
        "nixfly: app: the app listens on 127.0.0.1:8080 only: fly-proxy cannot reach a loopback address; "
        "fly.toml expects 0.0.0.0:8080 (internal_port = 8080)"
    ]
    # Fly's checks come to the machine's address, not its loopback: the check fails here too.
    host = machine_address()
    assert f"nixfly: app: check servicecheck-00-http-8080 (GET http://{host}:8080/) is critical: GET /: " in r.stderr
    assert r.stderr.splitlines()[-1].startswith("nixfly: rehearsal failed: 2 problem(s)")


def test_an_app_on_another_port_is_named_with_the_port_fly_toml_expects(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    # The image serves 8081; fly.toml says 8082 (ports of their own, so no lock on 8080 is needed).
    toml = fly_toml(tmp_path, f'[processes]\napp = "{HTTPD.format(addr="8081")}"\n' + web_service(port=8082))
    r = nixfly("--runtime", "runc", "-c", str(toml), "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 1, r.stderr
    (m,) = json.loads(r.stdout)["machines"]
    assert m["problems"][0] in (
        f"app: the app listens on {a}, not on port 8082: fly.toml expects 0.0.0.0:8082 (internal_port = 8082)"
        for a in ("0.0.0.0:8081", "[::]:8081")
    )
    assert m["problems"][0] in r.stderr
    (check,) = m["checks"]
    assert check["status"] == "critical" and "connection refused" in check["history"][-1]["output"]


def test_a_check_on_a_path_that_404s_is_critical_with_the_status(
    httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    toml = fly_toml(tmp_path, web_service(path="/healthz"))
    r = nixfly("--runtime", "bwrap", "-c", str(toml), "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 1, r.stderr
    (m,) = json.loads(r.stdout)["machines"]
    (check,) = m["checks"]
    assert check["status"] == "critical"
    assert {h["status"] for h in check["history"]} == {"critical"} and len(check["history"]) >= 2
    assert check["history"][-1]["output"].startswith("GET /healthz: 404 Not Found")
    assert check["history"][-1]["output"].endswith(
        "<BODY><H1>404 Not Found</H1> The requested URL was not found </BODY></HTML>"
    )
    assert m["problems"] == [
        f"app: check servicecheck-00-http-8080 (GET http://{machine_address()}:8080/healthz) is critical: "
        f"{check['history'][-1]['output']}"
    ]
    assert [x["address"] for x in m["listening"]] in (["0.0.0.0:8080"], ["[::]:8080"])  # the probe is content


# Each group records what it was started with into the shared volume, checks the [[files]] entry is there
# and writable, then stays up; the worker traps the kill signal to show it is what stops it.
RECORD = (
    "env > /data/$FLY_PROCESS_GROUP.env; echo $0 > /data/$FLY_PROCESS_GROUP.cmd; "
    "cat /etc/app/settings.txt > /data/$FLY_PROCESS_GROUP.file; "
    "echo appended >> /etc/app/settings.txt && echo writable >> /data/$FLY_PROCESS_GROUP.file; "
)
TRAP_USR1 = 'trap \\"echo stopped-by-usr1 > /data/worker.stop; exit 0\\" USR1;'
GROUPS = f"""
kill_signal = "SIGUSR1"
kill_timeout = 3
[processes]
web = "sh -c '{RECORD} exec httpd -f -p 8080 -h /www' web-cmd"
worker = "sh -c '{RECORD} {TRAP_USR1} echo worker up; while :; do sleep 0.1; done' worker-cmd"
[[files]]
guest_path = "/etc/app/settings.txt"
raw_value = "mode=rehearsal\\n"  # plain text: flyctl base64-encodes it for the API
[[mounts]]
source = "data"
destination = "/data"
processes = ["web", "worker"]
""" + web_service(processes='"web"')


@pytest.mark.parametrize("runtime", ["runc", "bwrap"])
def test_all_groups_start_with_their_own_command_env_files_and_volume(
    runtime: str, httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    toml = fly_toml(tmp_path, GROUPS, app="two-groups")
    data = tmp_path / "data"
    data.mkdir()
    r = nixfly("--runtime", runtime, "-c", str(toml), "--all-groups", "--volume", f"data={data}", "--json",
               str(httpd_layout), cache=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [m["group"] for m in out["machines"]] == ["web", "worker"]
    assert "[worker] worker up" in r.stderr.splitlines() and "warning" not in r.stderr
    for group in ("web", "worker"):
        env = dict(line.split("=", 1) for line in (data / f"{group}.env").read_text().splitlines() if "=" in line)
        assert env["FLY_PROCESS_GROUP"] == group
        assert (env["FLY_APP_NAME"], env["FLY_REGION"], env["PRIMARY_REGION"]) == ("two-groups", "fra", "fra")
        assert env["FLY_MACHINE_ID"] == env["FLY_ALLOC_ID"] and len(env["FLY_MACHINE_ID"]) == 14
        assert env["FLY_IMAGE_REF"].startswith("registry.fly.io/two-groups@sha256:")
        assert env["FLY_VM_MEMORY_MB"] == "256" and env["FLY_PRIVATE_IP"] and env["FLY_PUBLIC_IP"]
        assert (data / f"{group}.cmd").read_text() == f"{group}-cmd\n"
        assert (data / f"{group}.file").read_text() == "mode=rehearsal\nwritable\n"
    assert (data / "worker.stop").read_text() == "stopped-by-usr1\n"
    web, worker = out["machines"]
    assert worker["stop"]["app_signal_handling"] == "caught" and not worker["stop"]["killed_after_timeout"]
    assert web["expected_ports"] == [8080] and worker["expected_ports"] == [] and worker["checks"] == []


def test_mounts_default_to_a_directory_in_nixflys_state_kept_between_runs(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = fly_toml(tmp_path, '[processes]\nworker = "sh -c \'echo run >> /data/runs; sleep 30\'"\n'
                    '[[mounts]]\nsource = "vol"\ndestination = "/data"\n', app="keeps")  # fmt: skip
    state = tmp_path / "state"
    for _ in range(2):
        r = nixfly("--runtime", "runc", "-c", str(toml), str(httpd_layout), cache=cache,
                   env=env_with(NIXFLY_STATE_DIR=str(state)))  # fmt: skip
        assert r.returncode == 0, r.stderr
    assert (state / "rehearse" / "keeps" / "volumes" / "vol" / "runs").read_text() == "run\nrun\n"


def test_a_secret_backed_file_gets_the_secret_and_it_leaks_nowhere(
    httpd_layout: Path, cache: Path, tmp_path: Path, port_8080: None
) -> None:
    value = b"s3cr3t-token-4f9a1c-do-not-print"
    encoded = base64.b64encode(value).decode()
    state = tmp_path / "state"
    toml = fly_toml(
        tmp_path,
        "[processes]\n"
        'app = "sh -c \'sha256sum /run/secrets/token; test -n \\"$API_TOKEN\\" && echo env-set; '
        "exec httpd -f -p 8080 -h /www'\"\n"
        '[[files]]\nguest_path = "/run/secrets/token"\nsecret_name = "API_TOKEN"\n' + web_service(),
    )
    r = nixfly("--runtime", "runc", "-c", str(toml), "--json", "--secret", f"API_TOKEN={encoded}",
               str(httpd_layout), cache=cache, env=env_with(NIXFLY_STATE_DIR=str(state)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"[app] {hashlib.sha256(value).hexdigest()}  /run/secrets/token" in r.stderr.splitlines()
    assert "[app] env-set" in r.stderr.splitlines()
    (m,) = json.loads(r.stdout)["machines"]
    assert m["machine_config"]["files"] == [{"guest_path": "/run/secrets/token", "secret_name": "API_TOKEN"}]
    for needle in (value, encoded.encode()):
        assert needle not in r.stdout.encode() and needle not in r.stderr.encode()
        for root in (state, cache):
            for p in root.rglob("*") if root.exists() else []:
                if p.is_file() and not p.is_symlink():
                    assert needle not in p.read_bytes(), p
    # Not given: named in one line; --require-secrets makes it an error before anything starts.
    r = nixfly("--runtime", "runc", "-c", str(toml), "--require-secrets", str(httpd_layout), cache=cache)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "nixfly: secret API_TOKEN was not given here (it backs [[files]] /run/secrets/token): "
        "pass --secret API_TOKEN=VALUE or --secrets-file FILE\n"
    )
    # A value that is not base64 (Fly decodes secret-backed files) is refused, without echoing it.
    r = nixfly("--runtime", "runc", "-c", str(toml), "--secret", "API_TOKEN=not base64!", str(httpd_layout),
               cache=cache)  # fmt: skip
    assert r.returncode == 2 and "not base64" in r.stderr and "not base64!" not in r.stderr
    assert r.stderr.count("\n") == 1


def test_ctrl_c_stops_the_container_with_the_kill_signal(httpd_layout: Path, cache: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    toml = fly_toml(
        tmp_path,
        'kill_signal = "SIGTERM"\n[processes]\nworker = "sh -c \'trap \\"echo got-term > /data/stop; exit 0\\" '
        'TERM; echo ready; while :; do sleep 0.1; done\'"\n[[mounts]]\nsource = "d"\ndestination = "/data"\n',
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "nixfly", "run", "--cache-dir", str(cache), "--runtime", "bwrap", "-c", str(toml),
         "--volume", f"d={data}", "--for", "60s", str(httpd_layout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert p.stderr is not None
        while "[worker] ready" not in (line := p.stderr.readline()):
            assert line, "nixfly ended before the container was ready"
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert (data / "stop").read_text() == "got-term\n"
    assert err.endswith("nixfly: rehearsal interrupted\n")


def test_a_crashing_process_is_restarted_by_policy_and_fails_the_rehearsal(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = fly_toml(tmp_path, '[processes]\nworker = "sh -c \'echo boom; exit 3\'"\n'
                    '[[restart]]\npolicy = "on-failure"\nretries = 2\n')  # fmt: skip
    # Watched until the policy gives up (the third exit), not only for the default two seconds.
    r = nixfly("--runtime", "runc", "-c", str(toml), "--json", "--wait-timeout", "60s", str(httpd_layout), cache=cache)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    (m,) = out["machines"]
    assert [e["exit_code"] for e in m["exits"]] == [3, 3, 3] and m["restarts"] == 2
    assert out["duration"] < 60
    assert r.stderr.count("[worker] boom") == 3
    assert "nixfly: worker: the process exited 3 times (exit codes 3, 3, 3), the first after " in r.stderr


def test_the_machine_config_is_the_one_deploy_dry_run_prints(
    httpd_layout: Path, cache: Path, tmp_path: Path, registry: Any, fly_env: Any, port_8080: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from nixfly.cli import main
    from nixfly.fly.plan import Action

    ref = f"{registry.host}/rehearsal/web:1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{httpd_layout}:latest",
                    f"docker://{ref}"], check=True, capture_output=True, timeout=60)  # fmt: skip
    toml = fly_toml(tmp_path, GROUPS.replace("kill_timeout = 3", 'kill_timeout = 3\n[[vm]]\nmemory = "512mb"\n'))
    fly_env.create_app("rehearsal")
    r = nixfly("--runtime", "runc", "-c", str(toml), "--group", "web", "--volume", f"data={tmp_path}",
               "--no-tls-verify", "--json", ref, cache=cache, env=dict(os.environ))  # fmt: skip
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)["machines"]
    used = m["machine_config"]
    pinned = used["image"]
    assert pinned.startswith(f"{registry.host}/rehearsal/web@sha256:")
    env = dict(line.split("=", 1) for line in (tmp_path / "web.env").read_text().splitlines() if "=" in line)
    assert (env["FLY_IMAGE_REF"], env["FLY_VM_MEMORY_MB"]) == (pinned, "512")

    capsys.readouterr()
    assert main(["deploy", "-c", str(toml), "-i", pinned, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    creates = [a for a in plan["actions"] if a["action"] == "create" and a["group"] == "web"]
    assert creates, plan
    expected = Action("create", "web", None, "fra", new=used).diff()
    assert any(line.startswith("+ checks") or line.startswith("+ services[0].checks") for line in expected)
    for a in creates:
        assert a["diff"] == expected


def test_secrets_the_app_has_on_fly_but_not_given_here_are_named(
    httpd_layout: Path, cache: Path, tmp_path: Path, fly_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from nixfly.cli import main

    fly_env.create_app("with-secrets")
    assert main(["secrets", "set", "-a", "with-secrets", "--stage", "DATABASE_URL=postgres://x", "SENTRY_DSN=y"]) == 0
    toml = fly_toml(tmp_path, "[processes]\nworker = \"sh -c 'echo db=$DATABASE_URL; sleep 30'\"\n", app="with-secrets")
    args = ("--runtime", "bwrap", "-c", str(toml), str(httpd_layout))
    r = nixfly(*args, "--secret", "SENTRY_DSN=given", cache=cache, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(
        "nixfly: warning: secret DATABASE_URL was not given here (the app has it on Fly): "
        "pass --secret DATABASE_URL=VALUE or --secrets-file FILE\n"
    )
    assert "[worker] db=\n" in r.stderr
    r = nixfly(*args, "--require-secrets", "--secret", "SENTRY_DSN=given", cache=cache, env=dict(os.environ))
    assert (r.returncode, r.stderr.count("\n")) == (2, 1) and "secret DATABASE_URL was not given" in r.stderr
    # From a dotenv file and this environment: nothing missing, and the container has the values.
    dotenv = tmp_path / "secrets.env"
    dotenv.write_text("# local values\nexport SENTRY_DSN='from-file'\n")
    r = nixfly(*args, "--require-secrets", "--secrets-file", str(dotenv), cache=cache,
               env={**os.environ, "DATABASE_URL": "from-env"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "[worker] db=from-env\n" in r.stderr
    # --offline asks Fly nothing.
    r = nixfly(*args, "--offline", "--require-secrets", cache=cache, env=dict(os.environ))
    assert r.returncode == 0, r.stderr


def test_deploy_rehearse_deploys_only_what_passed(
    httpd_layout: Path, tmp_path: Path, registry: Any, fly_env: Any, port_8080: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from nixfly.cli import main

    tag = f"{registry.host}/rehearsal/deploy:1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{httpd_layout}:latest",
                    f"docker://{tag}"], check=True, capture_output=True, timeout=60)  # fmt: skip
    fly_env.create_app("rehearsal")
    bad = fly_toml(tmp_path, web_service(path="/healthz"))
    assert main(["deploy", "-c", str(bad), "-i", tag, "--rehearse"]) == 1
    err = capsys.readouterr().err
    assert f"check servicecheck-00-http-8080 (GET http://{machine_address()}:8080/healthz) is critical" in err
    assert err.endswith("nixfly: rehearsal failed: 1 problem(s); nothing was deployed\n")
    assert fly_env.mutations() == []

    good = fly_toml(tmp_path, web_service(path="/"))
    assert main(["deploy", "-c", str(good), "-i", tag, "--rehearse", "--ha=false"]) == 0
    out, err = capsys.readouterr()
    assert "==> rehearsal passed; deploying" in err
    pinned = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{tag}"],
                            check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert f"deployed {registry.host}/rehearsal/deploy@{pinned} to rehearsal" in out


@pytest.mark.parametrize(
    ("body", "args", "message"),
    [
        ('[[files]]\nguest_path = "/../../etc/shadow"\nraw_value = "eA=="\n', (),
         "nixfly: fly.toml: [[files]] guest_path '/../../etc/shadow' must be an absolute path inside the machine, "
         "without '..'\n"),
        ('[[mounts]]\nsource = "../up"\ndestination = "/data"\n', (),
         "nixfly: fly.toml: [[mounts]] source '../up' may hold only letters, digits, '-' and '_'\n"),
        ("", ("--volume", "nope=/tmp"),
         "nixfly: --volume nope=…: no [[mounts]] source 'nope' in the groups being run (none)\n"),
        ("", ("--volume", "/tmp:/data"),
         "nixfly: --volume '/tmp:/data': with -c, give NAME=DIR (a [[mounts]] source and a local directory)\n"),
        ("", ("--secrets-file", "/dev/zero"),
         "nixfly: --secrets-file /dev/zero is not a regular file (a character device)\n"),
        ("", ("--group", "nope"), "nixfly: fly.toml defines no process group 'nope' (groups: app)\n"),
        ("", ("--for", "soon"), "nixfly: --for 'soon': give seconds (90) or a duration like 90s, 5m or 1m30s\n"),
        ("", ("--wait-timeout", "99999999999999h"),
         "nixfly: --wait-timeout '99999999999999h': give seconds (90) or a duration like 90s, 5m or 1m30s\n"),
        ("", ("-e", "=hunter2"), "nixfly: -e '': expected KEY=VALUE\n"),
        ("", ("-e", "  =hunter2"), "nixfly: -e '': expected KEY=VALUE\n"),
    ],
    ids=["files-dotdot", "volume-name", "unknown-volume", "docker-volume", "dev-zero", "no-group", "bad-duration",
         "duration-overflow", "env-without-key", "env-blank-key"],
)  # fmt: skip
def test_bad_input_is_one_line_and_starts_nothing(
    body: str, args: tuple[str, ...], message: str, httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = fly_toml(tmp_path, '[processes]\napp = "sleep 30"\n' + body)
    r = nixfly("-c", str(toml), *args, str(httpd_layout), cache=cache)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message)
    assert not (cache / "runs").exists() or list((cache / "runs").iterdir()) == []


@pytest.mark.parametrize("value", ["1e20", '"9999999999999h"', '"2562048h"'])
def test_a_kill_timeout_beyond_what_fly_reads_is_one_line_and_starts_nothing(
    value: str, httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "fly.toml"
    toml.write_text(f'app = "rehearsal"\nkill_timeout = {value}\n[processes]\napp = "sleep 30"\n')
    r = nixfly("-c", str(toml), str(httpd_layout), cache=cache)
    shown = "1e+20" if value == "1e20" else value.replace('"', "'")
    message = f"nixfly: {toml}:2: kill_timeout: {shown} is too long a duration (at most 2562047h)\n"
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message)
    assert not (cache / "runs").exists() or list((cache / "runs").iterdir()) == []


def test_a_fifo_as_secrets_file_is_refused_without_waiting_for_a_writer(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "secrets.env"
    os.mkfifo(fifo)  # nobody ever writes: opening it for reading the usual way blocks for ever
    toml = fly_toml(tmp_path, '[processes]\napp = "sleep 30"\n')
    r = nixfly("-c", str(toml), "--secrets-file", str(fifo), str(httpd_layout), cache=cache, timeout=30)
    message = f"nixfly: --secrets-file {fifo} is not a regular file (a FIFO)\n"
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message)


def test_rehearsal_flags_without_a_fly_toml_and_a_command_with_one_are_refused(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    r = nixfly("--all-groups", str(httpd_layout), cache=cache)
    assert r.returncode == 2 and r.stderr.startswith("nixfly: --group, --secret") and r.stderr.count("\n") == 1
    toml = fly_toml(tmp_path, "")
    r = nixfly("-c", str(toml), str(httpd_layout), "--", "sh", cache=cache)
    assert r.returncode == 2 and "runs the process group's command from fly.toml" in r.stderr


def test_an_app_that_listens_on_nothing_is_named_after_the_wait(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = fly_toml(tmp_path, '[processes]\napp = "sleep 60"\n[http_service]\ninternal_port = 8085\n')
    r = nixfly("--runtime", "bwrap", "-c", str(toml), "--wait-timeout", "3", "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert 3 <= out["duration"] < 15
    assert out["machines"][0]["problems"] == [
        "app: the app listens on no TCP port: fly.toml expects 0.0.0.0:8085 (internal_port = 8085)"
    ]


def test_build_then_rehearse_a_nix_closure(tiny_closure: Any, cache: Path, tmp_path: Path) -> None:
    bb = tiny_closure.bb
    (tmp_path / "nixfly.toml").write_text(f'[image]\nroots = ["{bb}"]\n')
    serve = "sh -c 'mkdir -p /tmp/www && echo built > /tmp/www/index.html && exec httpd -f -p 8086 -h /tmp/www'"
    toml = fly_toml(tmp_path, f'[env]\nPATH = "{bb}/bin"\n[processes]\napp = "{serve}"\n' + web_service(port=8086))
    r = nixfly("--runtime", "bwrap", "-c", str(toml), "--build", str(tmp_path / "nixfly.toml"), "--json",
               cache=cache, env=env_with(XDG_CACHE_HOME=str(tmp_path / "xdg")))  # fmt: skip
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)["machines"]
    assert m["checks"][0]["status"] == "passing" and m["machine_config"]["image"].startswith("registry.fly.io/")
    assert r.stderr.startswith(f"==> building {tmp_path / 'nixfly.toml'}\n")
    r = nixfly("-c", str(toml), "--build", str(tmp_path / "nixfly.toml"), "some-image", cache=cache)
    assert (r.returncode, r.stderr) == (2, f"nixfly: give IMAGE or --build {tmp_path / 'nixfly.toml'}, not both\n")


def test_checks_send_the_configured_method_path_and_headers_and_report_as_fly_does() -> None:
    # A real HTTP server on loopback records what the checks send; the config is the Machines API shape.
    import http.server
    import threading

    from nixfly.run.checks import checks_of, run_check

    seen: list[tuple[str, str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path, self.headers.get("X-Probe")))
            code = {"/ok": 200, "/busy": 429}.get(self.path, 500)
            self.send_response(code)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"\x1b[31mline one\nline two\n")

        do_GET = do_HEAD = _answer

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        mc = {
            "checks": {
                "head": {"type": "http", "port": port, "method": "HEAD", "path": "/ok", "timeout": "1s",
                         "headers": [{"name": "X-Probe", "values": ["yes"]}]},
                "busy": {"type": "http", "port": port, "path": "/busy"},
                "broken": {"type": "http", "port": port, "path": "/broken"},
            },
            "services": [{"protocol": "tcp", "internal_port": port, "checks": [{"type": "tcp", "interval": "3s"}]}],
        }  # fmt: skip
        specs = {s.name: s for s in checks_of(mc, "127.0.0.1")}
        assert sorted(specs) == ["broken", "busy", "head", f"servicecheck-00-tcp-{port}"]
        assert (specs["head"].timeout, specs["busy"].interval, specs[f"servicecheck-00-tcp-{port}"].interval) == (
            1.0, 15.0, 3.0)  # fmt: skip
        results = {name: run_check(spec, 0.0) for name, spec in specs.items()}
    finally:
        server.shutdown()
        server.server_close()
    assert ("HEAD", "/ok", "yes") in seen
    assert results["head"].status == "passing" and results["head"].output.startswith("HEAD /ok: 200 OK")
    assert results["busy"].status == "warning"
    assert results["broken"].status == "critical"
    assert results["broken"].output.endswith(": [31mline one line two")  # one printable line
    assert results[f"servicecheck-00-tcp-{port}"].status == "passing"
    # Nothing listens any more: critical, saying why.
    after = run_check(specs[f"servicecheck-00-tcp-{port}"], 1.0)
    assert (after.status, after.output) == ("critical", f"connect to 127.0.0.1:{port}: connection refused")


def test_an_app_that_ignores_the_kill_signal_is_killed_after_kill_timeout(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    toml = fly_toml(tmp_path, 'kill_signal = "SIGTERM"\nkill_timeout = 1\n[processes]\n'
                    'worker = "sh -c \'trap \\"\\" TERM; while :; do sleep 0.1; done\'"\n')  # fmt: skip
    r = nixfly("--runtime", "runc", "-c", str(toml), "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)["machines"]
    assert m["stop"]["app_signal_handling"] == "ignored" and m["stop"]["killed_after_timeout"] is True
    assert 1.0 <= m["stop"]["took"] < 10
    assert "==> worker: did not stop within 1s of SIGTERM; killed" in r.stderr


def test_groups_on_the_same_port_are_rehearsed_one_after_the_other(
    httpd_layout: Path, cache: Path, tmp_path: Path
) -> None:
    # On Fly each machine has its own network; here they share one, so they take turns.
    serve = HTTPD.format(addr="8088")
    services = '[[services]]\ninternal_port = 8088\nprocesses = ["one", "two"]\n'
    checks = '[[services.tcp_checks]]\ngrace_period = "1s"\ninterval = "1s"\n'
    toml = fly_toml(tmp_path, f'[processes]\none = "{serve}"\ntwo = "{serve}"\n{services}{checks}')
    r = nixfly("--runtime", "bwrap", "-c", str(toml), "--all-groups", "--json", str(httpd_layout), cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(m["group"], m["checks"][0]["status"]) for m in out["machines"]] == [("one", "passing"), ("two", "passing")]
    assert "==> one: rehearsing apart (other groups use the same ports)" in r.stderr
    assert r.stderr.index("==> two: starting") > r.stderr.index("==> one: starting")
