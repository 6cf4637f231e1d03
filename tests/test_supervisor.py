"""Several processes in one machine: the nixfly.toml checks (each bad input on its own line), the generated
runit and process-compose configuration (golden files), and process-compose's own schema as the judge of
what we write for it. The real supervisor runs in tests/test_supervisor_run.py."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nixfly.build.closure import Closure, StorePath
from nixfly.build.customise import customise
from nixfly.build.layers import Entry
from nixfly.build.spec import ImageSpec, load_spec
from nixfly.build.supervisor import LABEL, Supervision, supervise
from nixfly.errors import ConfigError, UsageError
from tests.support.cli import run_nixfly
from tests.support.nixstore import TinyClosure

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "supervisor"
SCHEMA = DATA / "process-compose" / "process-compose-schema.json"
UPDATE = os.environ.get("NIXFLY_UPDATE_GOLDEN") == "1"

BUSYBOX = "0000000000000000000000000000000a-busybox-1.36"
RUNIT = "0000000000000000000000000000000b-runit-2.1.2"
PC = "0000000000000000000000000000000c-process-compose-1.64"
S6 = "0000000000000000000000000000000d-s6-2.11"
BUSYBOX_TOOLS = ("sh", "mkdir", "chown", "chmod", "sleep", "timeout", "wget", "nc", "httpd", "setpriv", "id", "cat")


def fake_store(
    tmp: Path, *, runit: bool = True, pc: bool = True, s6: bool = True, busybox_tools: tuple[str, ...] = BUSYBOX_TOOLS
) -> Closure:
    """A closure of made-up store paths whose bin/ entries are links to the host's busybox (executable)."""
    store = tmp / "nix" / "store"
    layout = {BUSYBOX: busybox_tools}
    if runit:
        layout[RUNIT] = ("runsvdir", "runsv", "chpst", "sv")
    if pc:
        layout[PC] = ("process-compose",)
    if s6:
        layout[S6] = ("s6-svscan", "s6-supervise", "s6-svc", "s6-svwait", "s6-svscanctl", "s6-applyuidgid")
    paths = {}
    for base, tools in layout.items():
        b = store / base / "bin"
        b.mkdir(parents=True, exist_ok=True)
        for t in tools:
            if not (b / t).exists():
                (b / t).symlink_to("/bin/busybox")
        paths[str(store / base)] = StorePath(str(store / base), 1000, ())
    return Closure(tuple(sorted(paths)), paths, "x86_64-linux", str(store))


FULL = """\
[image]
roots = []
{supervisor}

[[image.users]]
name = "app"
uid = 1000
gid = 1000
groups = ["logs"]

[[image.groups]]
name = "app"
gid = 1000

[[image.groups]]
name = "logs"
gid = 1002

[[image.dirs]]
path = "/data/cache"
uid = 1000
gid = 1000
mode = "0700"
at_boot = true

[[image.boot_dirs]]
path = "/data/app"
uid = 1000
gid = 1000
mode = "0750"

[[image.processes]]
name = "migrate"
oneshot = true
restart = "on-failure"
backoff = 2
max_restarts = 3
user = "app"
command = ["/bin/sh", "-c", "echo migrating > /data/app/migrated"]
working_dir = "/data/app"

[[image.processes]]
name = "db"
user = "app"
command = ["/bin/sh", "-c", "exec nc -l -p 5432"]
depends_on = ["migrate"]
readiness = {{ kind = "tcp", port = 5432, period = 1, timeout = 2 }}
stop_signal = "SIGINT"
stop_timeout = 5

[[image.processes]]
name = "web"
user = "1001"
group = "app"
command = ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/data/app"]
env = {{ GREETING = "it's a \\"test\\"", PORT = "8080" }}
depends_on = {{ db = "healthy", migrate = "completed_successfully" }}
restart = "on-failure"
max_restarts = 5
stop_timeout = 4

[image.processes.readiness]
kind = "http"
port = 8080
path = "/healthz"
initial_delay = 1
success_threshold = 2

[[image.processes]]
name = "sidecar"
command = ["/bin/sh", "-c", "while true; do sleep 5; done"]
depends_on = {{ web = "started" }}
restart = "never"
readiness = {{ kind = "exec", command = ["/bin/cat", "/data/app/migrated"] }}
stop_signal = "QUIT"
"""


def write(tmp: Path, text: str, name: str = "nixfly.toml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def generated(sup: Supervision, store: str) -> str:
    """Every generated entry, in order, with the made-up store's location shown as /nix/store."""
    out = [f"entrypoint: {json.dumps(list(sup.entrypoint))}"]
    for e in sup.entries:
        out.append(f"=== {e.kind} {e.path} {e.mode:04o}")
        if e.kind == "file":
            out.append(e.data.decode())
    return "\n".join(out).replace(store, "/nix/store") + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} differs from the golden copy (NIXFLY_UPDATE_GOLDEN=1 rewrites it)"


def all_entries(spec: ImageSpec, closure: Closure) -> list[Entry]:
    cust = customise(spec, closure)
    return [*cust.entries, *(e for es in cust.root_entries.values() for e in es)]


def full_supervision(tmp_path: Path, backend: str) -> tuple[Supervision, Closure]:
    closure = fake_store(tmp_path)
    spec = load_spec(write(tmp_path, FULL.format(supervisor=f'supervisor = "{backend}"')), warn=lambda _m: None)
    cust = customise(spec, closure)  # the links into the fake store make "httpd" resolve on PATH
    others = [e for e in all_entries(spec, closure) if not e.path.startswith("/etc/nixfly")]
    sup = supervise(spec, closure, others)
    assert sup is not None and sup.backend == backend
    assert cust.entrypoint == sup.entrypoint and json.loads(cust.labels[LABEL]) == sup.description
    return sup, closure


# -- golden files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["runit", "s6", "process-compose"])
def test_generated_configuration_matches_golden_files(tmp_path: Path, backend: str) -> None:
    sup, closure = full_supervision(tmp_path, backend)
    check_golden(f"{backend}.golden", generated(sup, closure.store_dir))
    # Deterministic: a second generation from a fresh store gives the same bytes.
    again, closure2 = full_supervision(tmp_path / "again", backend)
    assert generated(again, closure2.store_dir) == generated(sup, closure.store_dir)


def test_runit_layout_and_privileges(tmp_path: Path) -> None:
    sup, closure = full_supervision(tmp_path, "runit")
    files = {e.path: e for e in sup.entries if e.kind == "file"}
    assert set(files) == {
        "/etc/nixfly/init",
        *(f"/etc/nixfly/runit/{n}/{f}" for n in ("db", "web", "sidecar") for f in ("run", "finish", "check")),
        "/etc/nixfly/runit/db/control/d",
        "/etc/nixfly/runit/sidecar/control/d",
    }
    assert all(e.mode == 0o755 for e in files.values())
    web = files["/etc/nixfly/runit/web/run"].data.decode()
    chpst = f"{closure.store_dir}/{RUNIT}/bin/chpst"
    # uid 1001 from a number, gid of the group "app"; app's supplementary group logs (1002) only for app.
    assert f"exec {chpst} -u :1001:1000 httpd -f" in web
    db = files["/etc/nixfly/runit/db/run"].data.decode()
    assert f"exec {chpst} -u :1000:1000:1002 /bin/sh -c" in db
    assert "chpst" not in files["/etc/nixfly/runit/sidecar/run"].data.decode()  # root: no privilege drop
    init = files["/etc/nixfly/init"].data.decode()
    # Boot dirs first (the at_boot dir too), then the oneshot, then runsvdir; stop in reverse order.
    assert init.index("/data/cache") < init.index("/data/app && ") < init.index("boot step migrate")
    assert init.index("boot step migrate") < init.index("runsvdir -P")
    assert re.findall(r"force-stop /etc/nixfly/runit/(\S+)", init) == ["sidecar", "web", "db"]
    assert "-w 5 force-stop" in init and "-w 4 force-stop" in init
    assert "kill -INT" in files["/etc/nixfly/runit/db/control/d"].data.decode()


def test_s6_service_directories(tmp_path: Path) -> None:
    sup, closure = full_supervision(tmp_path, "s6")
    files = {e.path: e.data.decode() for e in sup.entries if e.kind == "file"}
    assert files["/etc/nixfly/s6/db/down-signal"] == "SIGINT\n" and files["/etc/nixfly/s6/db/timeout-kill"] == "5000\n"
    apply = f"{closure.store_dir}/{S6}/bin/s6-applyuidgid"
    assert f"exec {apply} -u 1001 -g 1000 -G 1000 httpd -f" in files["/etc/nixfly/s6/web/run"]
    assert f"exec {apply} -u 1000 -g 1000 -G 1002 /bin/sh" in files["/etc/nixfly/s6/db/run"]
    init = files["/etc/nixfly/init"]
    assert re.findall(r"s6-svc -wD -T (\d+) -d /etc/nixfly/s6/(\S+)", init) == [
        ("11000", "sidecar"), ("5000", "web"), ("6000", "db")
    ]  # fmt: skip
    assert files["/etc/nixfly/s6/sidecar/finish"].rstrip().endswith("exit 125")  # never: a permanent failure


def test_description_lists_processes_users_and_boot_steps(tmp_path: Path) -> None:
    from nixfly.inspect import PROCESSES_LABEL

    assert PROCESSES_LABEL == LABEL  # inspect reads the label build/supervisor.py writes
    sup, _ = full_supervision(tmp_path, "runit")
    d = json.loads(sup.label)
    assert d["supervisor"] == "runit"
    assert [p["name"] for p in d["processes"]] == ["migrate", "db", "web", "sidecar"]
    web = d["processes"][2]
    assert (web["uid"], web["gid"], web["user"], web["restart"]) == (1001, 1000, "1001", "on-failure")
    assert web["depends_on"] == {"db": "healthy", "migrate": "completed_successfully"}
    assert d["processes"][1]["depends_on"] == {"migrate": "completed_successfully"}  # the list form's default
    assert d["users"] == [{"name": "app", "uid": 1000, "gid": 1000}]
    assert d["boot"] == [
        {"step": "dir", "path": "/data/cache", "uid": 1000, "gid": 1000, "mode": "0700"},
        {"step": "dir", "path": "/data/app", "uid": 1000, "gid": 1000, "mode": "0750"},
        {"step": "oneshot", "name": "migrate"},
    ]


# -- process-compose's schema ----------------------------------------------------------------------------


def strict_schema() -> dict[str, Any]:
    """process-compose's schema with its ``required`` lists dropped (they name fields process-compose
    computes at load time) and unknown names forbidden, so names and types are what is checked."""
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("required", None)
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def test_process_compose_yaml_passes_its_schema(tmp_path: Path) -> None:
    sup, closure = full_supervision(tmp_path, "process-compose")
    text = next(e.data for e in sup.entries if e.path == "/etc/nixfly/process-compose.yaml").decode()
    doc = yaml.safe_load(text)
    jsonschema.validate(doc, strict_schema())
    procs = doc["processes"]
    assert list(procs) == ["nixfly-boot", "migrate", "db", "web", "sidecar"]
    assert procs["web"]["depends_on"] == {
        "nixfly-boot": {"condition": "process_completed_successfully"},
        "db": {"condition": "process_healthy"},
        "migrate": {"condition": "process_completed_successfully"},
    }
    assert procs["web"]["readiness_probe"]["http_get"] == {
        "host": "127.0.0.1", "scheme": "http", "path": "/healthz", "port": "8080"
    }  # fmt: skip
    assert procs["web"]["availability"] == {"restart": "on_failure", "backoff_seconds": 1, "max_restarts": 5}
    assert procs["sidecar"]["availability"] == {"restart": "exit_on_failure"}
    assert procs["db"]["shutdown"] == {"signal": 2, "timeout_seconds": 5}
    assert procs["sidecar"]["shutdown"]["signal"] == 3
    setpriv = f"{closure.store_dir}/{BUSYBOX}/bin/setpriv"
    assert procs["web"]["entrypoint"][:5] == [setpriv, "--reuid=1001", "--regid=1000", "--clear-groups", "--"]
    assert procs["db"]["entrypoint"][3] == "--groups=1002"
    assert procs["web"]["environment"] == ["GREETING=it's a \"test\"", "PORT=8080"]
    assert doc["shell"]["shell_command"] == f"{closure.store_dir}/{BUSYBOX}/bin/sh"
    assert "migrate" in doc["processes"] and "shutdown" not in procs["migrate"]


def test_schema_check_can_fail(tmp_path: Path) -> None:
    """The strict schema rejects a misspelt name and a wrong type (so the check above means something)."""
    sup, _ = full_supervision(tmp_path, "process-compose")
    doc = yaml.safe_load(next(e.data for e in sup.entries if e.path.endswith(".yaml")))
    schema = strict_schema()
    bad = copy.deepcopy(doc)
    bad["processes"]["web"]["readiness_probe"]["http_get"]["port"] = 8080  # schema: a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(doc)
    bad["processes"]["web"]["availability"]["backoff"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(doc)
    bad["processes"]["web"]["depends_on"]["db"]["condition"] = "healthy"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_default_backend_is_whichever_the_closure_holds(tmp_path: Path) -> None:
    text = FULL.format(supervisor="")
    spec = load_spec(write(tmp_path, text), warn=lambda _m: None)
    only_runit = fake_store(tmp_path / "a", pc=False, s6=False)
    sup = supervise(spec, only_runit, all_entries(spec, only_runit))
    assert sup is not None and sup.backend == "runit"
    only_pc = fake_store(tmp_path / "b", runit=False, s6=False)
    sup = supervise(spec, only_pc, all_entries(spec, only_pc))
    assert sup is not None and sup.backend == "process-compose"
    only_s6 = fake_store(tmp_path / "c", runit=False, pc=False)
    sup = supervise(spec, only_s6, all_entries(spec, only_s6))
    assert sup is not None and sup.backend == "s6"


def test_boot_dirs_alone_wrap_the_image_entrypoint(tmp_path: Path) -> None:
    closure = fake_store(tmp_path)
    # The wrapped entrypoint must exist in the image (checked at build time): busybox's sh links to /bin/sh.
    p = write(tmp_path, '[image]\nentrypoint = ["/bin/sh", "serve"]\n[[image.boot_dirs]]\npath = "/data"\nuid = 7\n')
    spec = load_spec(p)
    cust = customise(spec, closure)
    sh = f"{closure.store_dir}/{BUSYBOX}/bin/sh"
    assert cust.entrypoint == (sh, "/etc/nixfly/boot", "/bin/sh", "serve")
    boot = next(e for e in cust.entries if e.path == "/etc/nixfly/boot").data.decode()
    assert "chown 7:0 /data" in boot and boot.rstrip().endswith('exec "$@"')


# -- bad input: one line each, naming the file and line ----------------------------------------------------

BASE = """\
[image]
roots = []

[[image.users]]
name = "app"
uid = 1000

[[image.processes]]
name = "a"
command = ["/bin/sh"]
"""


@pytest.mark.parametrize(
    ("extra", "line", "needle"),
    [
        ('user = "ghost"\n', 11, "user 'ghost' is not declared in [[image.users]]"),
        ('group = "ghosts"\n', 11, "group 'ghosts' is not declared in [[image.groups]]"),
        ('depends_on = ["nope"]\n', 11, "depends on 'nope', which is not declared"),
        ('\n[[image.processes]]\nname = "a"\ncommand = ["/bin/true"]\n', 13, "process 'a' is declared twice"),
        (
            'depends_on = ["b"]\n\n[[image.processes]]\nname = "b"\ncommand = ["/bin/true"]\ndepends_on = ["c"]\n\n'
            '[[image.processes]]\nname = "c"\ncommand = ["/bin/true"]\ndepends_on = { a = "started" }\n',
            11,
            "dependency cycle: a → b → c → a",
        ),
        ('depends_on = ["a"]\n', 11, "depends on itself"),
        ('\n[[image.processes]]\nname = "b"\ncommand = []\n', 14, "must be a non-empty list"),
        ('oneshot = true\nrestart = "always"\n', 12, "a oneshot runs to completion"),
        ('readiness = { kind = "http" }\n', 11, "a http probe needs a port"),
        ('stop_signal = "SIGFOO"\n', 11, "stop_signal: must be one of"),
        ('working_dir = "srv"\n', 11, "must be an absolute path"),
        (
            '\n[[image.processes]]\nname = "b"\ncommand = ["/bin/true"]\ndepends_on = { a = "healthy" }\n',
            15,
            "\"healthy\" needs a readiness probe on 'a'",
        ),
        ('name = "again"\n', None, None),  # a duplicate key is invalid TOML, reported by the parser
    ],
)
def test_bad_processes_name_file_and_line(tmp_path: Path, extra: str, line: int | None, needle: str | None) -> None:
    p = write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert "\n" not in msg
    if needle is None:
        assert "invalid TOML" in msg
        return
    assert msg.startswith(f"{p}:{line}: "), msg
    assert needle in msg


def test_bad_process_name(tmp_path: Path) -> None:
    p = write(tmp_path, BASE.replace('name = "a"', 'name = "no/slash"'))
    with pytest.raises(ConfigError, match=rf"^{p}:9: processes.0.name: 'no/slash' must be letters"):
        load_spec(p)


def test_entrypoint_with_processes_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, BASE.replace("roots = []", 'roots = []\nentrypoint = ["/bin/x"]'))
    with pytest.raises(ConfigError, match=rf"^{p}:3: entrypoint: cannot be combined with processes"):
        load_spec(p)


def test_readiness_on_a_port_the_process_cannot_bind_warns(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + 'user = "app"\nreadiness = { kind = "tcp", port = 80 }\n')
    seen: list[str] = []
    load_spec(p, warn=seen.append)
    assert len(seen) == 1 and seen[0].startswith(f"{p}:12: processes.0.readiness.port: port 80 is below 1024")


def test_stop_timeouts_beyond_fly_kill_timeout_warn(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "stop_timeout = 20\n")
    seen: list[str] = []
    load_spec(p, warn=seen.append)
    assert seen == []  # no fly.toml at hand: nothing to compare with
    (tmp_path / "fly.toml").write_text('app = "x"\nkill_timeout = "10s"\n')
    load_spec(p, warn=seen.append)
    assert len(seen) == 1 and seen[0].startswith(f"{p}:11: processes.0.stop_timeout: ")
    assert "add up to 20s, more than kill_timeout (10s)" in seen[0]
    # Spelt as flyctl reads it, a Go duration with several units (this one was not understood, so no warning).
    (tmp_path / "fly.toml").write_text('app = "x"\nkill_timeout = "0m15s"\n')
    seen.clear()
    load_spec(p, warn=seen.append)
    assert len(seen) == 1 and "add up to 20s, more than kill_timeout (15s)" in seen[0]


@pytest.mark.parametrize(
    ("text", "closure_kw", "line", "needle"),
    [
        (BASE, {"runit": False, "pc": False, "s6": False}, 8,
         "no supervisor in the closure to run the processes: add pkgs.process-compose"),
        (BASE.replace("roots = []", 'roots = []\nsupervisor = "runit"'), {"runit": False}, 3,
         "supervisor 'runit': no runsvdir in the closure: add pkgs.runit to roots"),
        (BASE.replace("/bin/sh", "/bin/missing"), {}, 10, "'/bin/missing' is not an executable file in the image"),
        (BASE.replace('"/bin/sh"', '"frobnicate"'), {}, 10, "'frobnicate' is not an executable file on PATH"),
        (BASE + 'user = "app"\n', {"runit": False, "s6": False, "busybox_tools": ("sh", "mkdir", "chown", "chmod")}, 11,
         "process-compose cannot switch users: add a helper"),
        (BASE + 'readiness = { kind = "exec", command = ["/bin/nothere"] }\n', {}, 11,
         "'/bin/nothere' is not an executable file"),
    ],
)  # fmt: skip
def test_build_time_checks_name_file_and_line(
    tmp_path: Path, text: str, closure_kw: dict[str, Any], line: int, needle: str
) -> None:
    p = write(tmp_path, text)
    spec = load_spec(p)
    closure = fake_store(tmp_path, **closure_kw)
    with pytest.raises(UsageError) as ei:
        customise(spec, closure)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}: ") and needle in msg and "\n" not in msg, msg


def test_cli_build_refuses_bad_processes_without_writing(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    """Through the CLI with a real Nix closure (busybox, no supervisor): exit 2, one line, no output."""
    toml = BASE.replace("roots = []", f'roots = ["{tiny_closure.app}"]')
    p = write(tmp_path, toml)
    out = tmp_path / "img"
    r = run_nixfly("build", "--config", str(p), "-o", f"oci:{out}", "--cache-dir", str(tmp_path / "c"))
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and f"{p}:8: processes: no supervisor in the closure" in lines[0], r.err
    assert "Traceback" not in r.err and not out.exists()
    p2 = write(tmp_path, BASE + 'user = "ghost"\n', "bad.toml")
    r = run_nixfly("build", "--config", str(p2), "-o", f"oci:{out}")
    assert r.code == 2 and f"{p2}:11: processes.0.user: user 'ghost'" in r.err and not out.exists()


def test_spec_round_trips_through_cli_merge(tmp_path: Path) -> None:
    """The CLI re-validates the merged spec: resolved conditions and the source survive it."""
    from nixfly.build.spec import to_dict, validate_spec

    spec = load_spec(write(tmp_path, FULL.format(supervisor="")), warn=lambda _m: None)
    again = validate_spec(to_dict(spec))
    assert again == spec
    assert isinstance(again, ImageSpec) and again.source == str(tmp_path / "nixfly.toml")


def test_inspect_lists_boot_steps_of_a_real_build(tiny_closure: TinyClosure, tmp_path: Path) -> None:
    """Boot directories without processes, built from a real Nix closure: the boot stage wraps the
    entrypoint, and ``nixfly inspect`` lists the boot steps and users from the image's label."""
    toml = (
        f'[image]\nroots = ["{tiny_closure.app}"]\nentrypoint = ["/bin/hello"]\n'
        '[[image.users]]\nname = "app"\nuid = 1000\n'
        '[[image.boot_dirs]]\npath = "/data"\nuid = 1000\ngid = 1000\nmode = "0700"\n'
    )
    p = write(tmp_path, toml)
    out = tmp_path / "img"
    r = run_nixfly("build", "--config", str(p), "-o", f"oci:{out}", "--cache-dir", str(tmp_path / "c"), "-q")
    assert r.code == 0, r.err
    r = run_nixfly("inspect", "--no-scan", "--json", f"oci:{out}")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["entrypoint"] == [f"{tiny_closure.bb}/bin/sh", "/etc/nixfly/boot", "/bin/hello"]
    assert rep["processes"]["boot"] == [{"step": "dir", "path": "/data", "uid": 1000, "gid": 1000, "mode": "0700"}]
    assert rep["processes"]["users"] == [{"name": "app", "uid": 1000, "gid": 1000}]
    r = run_nixfly("inspect", "--no-scan", f"oci:{out}")
    assert "processes (supervisor: none, boot stage only):" in r.out
    assert "  dir /data  owner 1000:1000, mode 0700" in r.out and "users: app (1000:1000)" in r.out


@pytest.mark.parametrize("path", ["data", "/", "/data/../etc"])
def test_boot_dirs_must_be_absolute_and_plain(tmp_path: Path, path: str) -> None:
    p = write(tmp_path, f'[image]\nroots = []\n\n[[image.boot_dirs]]\npath = "{path}"\n')
    with pytest.raises(ConfigError, match=rf"^{p}:5: boot_dirs.0.path: .* must be an absolute path below /"):
        load_spec(p)
