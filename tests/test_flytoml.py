"""fly.toml parsing and validation: good files load into the models, bad ones give one-line errors that
name the file, line and key; unknown keys warn with a suggestion."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixfly.errors import ConfigError
from nixfly.fly.flytoml import (
    FlyConfig,
    go_duration_string,
    load_fly_toml,
    parse_fly_toml,
    parse_go_duration,
    parse_memory_mb,
)

DATA = Path(__file__).parent / "data" / "fly"


def _load(tmp_path: Path, text: str, warnings: list[str] | None = None) -> FlyConfig:
    p = tmp_path / "fly.toml"
    p.write_text(text)
    if warnings is None:
        return load_fly_toml(p)
    return load_fly_toml(p, warn=warnings.append, allow_unknown_keys=True)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, text)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(str(tmp_path / "fly.toml"))
    return msg.removeprefix(str(tmp_path / "fly.toml"))


def test_full_reference_file_loads_every_section() -> None:
    warnings: list[str] = []
    cfg = load_fly_toml(DATA / "full.toml", warn=warnings.append)
    assert warnings == [
        f"{DATA / 'full.toml'}: flyctl ignores these keys, so they have no effect: files[1].processes (line 113) "
        "(flyctl writes every [[files]] entry on every group)"
    ]
    assert cfg.app == "nixfly-demo"
    assert cfg.primary_region == "ams"
    assert cfg.build is not None and cfg.build.image is not None and cfg.build.image.endswith("0" * 64)
    assert cfg.process_groups() == ["app", "worker"]
    assert cfg.deploy.strategy == "rolling"
    assert cfg.deploy.max_unavailable == 2
    assert cfg.deploy.wait_timeout == 120.0
    assert cfg.deploy.release_command_argv() == ["migrate", "--yes", "all tables"]
    # Numbers and booleans in [env] become the strings the machine will see.
    assert cfg.env == {"LOG_LEVEL": "debug", "PORT": "8080", "FEATURE": "true"}
    assert cfg.kill_signal == "SIGTERM"
    assert cfg.kill_timeout == timedelta(seconds=10)
    assert cfg.http_service is not None
    assert cfg.http_service.auto_stop_machines == "stop"
    assert cfg.http_service.checks[0].timeout == timedelta(milliseconds=5000)
    assert cfg.checks["status"].interval == timedelta(seconds=90)
    assert [m.source for m in cfg.mounts] == ["data"]
    assert [r.policy for r in cfg.restart] == ["never", "on-failure"]
    assert cfg.experimental is not None and cfg.experimental.entrypoint == ["/bin/tini", "--"]
    assert cfg.command_for("worker") == ["worker", "--queue", "high prio"]
    vm = cfg.vm_for("worker")
    assert vm is not None and vm.size == "performance-2x" and vm.resolved_memory_mb() == 8192
    vm_app = cfg.vm_for("app")
    assert vm_app is not None and vm_app.size == "shared-cpu-2x"


def test_defaults_without_optional_sections(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'app = "tiny"\n')
    assert cfg.process_groups() == ["app"]
    # flyctl's real default is rolling, not the schema's "canary".
    assert cfg.deploy.strategy == "rolling"
    assert cfg.deploy.max_unavailable == 0.33
    assert cfg.deploy.wait_timeout == 300.0
    assert cfg.deploy.release_command is None
    assert cfg.http_service is None and cfg.services == [] and cfg.mounts == []


def test_flyctl_spellings_the_schema_rejects_are_accepted() -> None:
    cfg = load_fly_toml(DATA / "flyctl-style.toml", warn=lambda m: pytest.fail(m))
    assert cfg.env == {"PORT": "8080", "RATIO": "0.5"}
    assert len(cfg.mounts) == 1 and cfg.mounts[0].destination == "/data"
    svc = cfg.services[0]
    assert svc.auto_stop_machines == "off"
    assert len(svc.http_checks) == 1 and svc.http_checks[0].interval == timedelta(seconds=10)
    assert cfg.kill_timeout == timedelta(seconds=5)
    assert cfg.vm[0].resolved_memory_mb() == 1024


def test_wait_timeout_accepts_duration_string_and_integer_seconds(tmp_path: Path) -> None:
    assert _load(tmp_path, 'app = "a"\n[deploy]\nwait_timeout = "1m30s"\n').deploy.wait_timeout == 90.0
    assert _load(tmp_path, 'app = "a"\n[deploy]\nwait_timeout = 45\n').deploy.wait_timeout == 45.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # wrong types
        ('app = "a"\n[http_service]\ninternal_port = "80"\n', ":3: http_service.internal_port: must be an integer"),
        ("app = 5\n", ":1: app: must be a string (got integer 5)"),
        ('app = "a"\nkill_timeout = true\n', ":2: kill_timeout: must be an integer or a string"),
        ('app = "a"\n[[vm]]\ncpus = "two"\n', ":3: vm[0].cpus: must be an integer"),
        # unknown strategy
        ('app = "a"\n\n[deploy]\n  strategy = "fast"\n', ":4: deploy.strategy: must be one of 'canary', 'rolling'"),
        # bad sizes
        ('app = "a"\n[[vm]]\n  size = "shared-cpu-3x"\n', ":3: vm[0].size: unknown size 'shared-cpu-3x'; known"),
        ('app = "a"\n[[vm]]\n  memory = "300mb"\n', ":3: vm[0].memory: memory 300 MB is not a multiple of 256 MB"),
        ('app = "a"\n[[vm]]\n  memory = "lots"\n', ":3: vm[0].memory: 'lots' is not a memory size"),
        # duplicate mounts for one group
        (
            'app = "a"\n[[mounts]]\nsource = "d1"\ndestination = "/d1"\n\n[[mounts]]\nsource = "d2"\n'
            'destination = "/d2"\n',
            ":6: mounts[1]: process group 'app' has more than one [[mounts]]",
        ),
        ('app = "a"\n[[mounts]]\nsource = "d1"\n', ":2: mounts[0]: missing required key 'destination'"),
        ('app = "a"\n[[mounts]]\nsource = "d"\ndestination = "data"\n', "mounts[0]: destination 'data' must be an"),
        # process groups
        (
            'app = "a"\n[processes]\nweb = "srv"\n[[services]]\ninternal_port = 80\nprocesses = ["wbe"]\n'
            "[[services.ports]]\nport = 80\n",
            ":6: services[0].processes: process group 'wbe' is not defined (groups: 'web') (did you mean 'web'?)",
        ),
        (
            'app = "a"\n[processes]\nweb = "srv"\nwork = "w"\n[http_service]\ninternal_port = 80\n',
            ":5: http_service: the app has 2 process groups",
        ),
        ('app = "a"\n[processes]\nweb = "srv \'unclosed"\n', ":3: processes.web: cannot split command"),
        # deploy section
        (
            'app = "a"\n[deploy]\nstratgy = "rolling"\n',
            ":3: deploy.stratgy: unknown key (did you mean 'strategy'?); pass --allow-unknown-keys",
        ),
        ('app = "a"\n[deploy]\nmax_unavailable = 0\n', "deploy: max_unavailable must be > 0"),
        ('app = "a"\n[deploy]\nwait_timeout = "soon"\n', "deploy.wait_timeout: 'soon' is not a duration"),
        (
            'app = "a"\n[deploy]\nstrategy = "canary"\n[[mounts]]\nsource = "d"\ndestination = "/d"\n',
            ":3: deploy.strategy: the canary strategy cannot be used with [[mounts]]",
        ),
        # checks
        ('app = "a"\n[checks.alive]\nport = 80\n', ":2: checks.alive: missing required key 'type'"),
        ('app = "a"\n[checks.alive]\ntype = "grpc"\n', "checks.alive.type: must be 'http' or 'tcp' (got 'grpc')"),
        ('app = "a"\n[checks.alive]\ntype = "tcp"\ninterval = "1s"\n', "checks.alive: interval 1s is too short"),
        ('app = "a"\n[checks.alive]\ntype = "tcp"\ntimeout = "2m"\n', "checks.alive: timeout 2m0s is too long"),
        # services
        (
            'app = "a"\n[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\n\n'
            '[[services]]\ninternal_port = 81\n[[services.ports]]\nport = "x"\n',
            ":10: services[1].ports[0].port: must be an integer (got string 'x')",
        ),
        ('app = "a"\n[[services]]\ninternal_port = 70000\n', "services[0]: internal_port 70000 is outside 1-65535"),
        ('app = "a"\n[[services]]\nprotocol = "sctp"\n', ":3: services[0].protocol: must be one of 'tcp', 'udp'"),
        # kill signal the Machines API refuses
        ('app = "a"\nkill_signal = "SIGSTOP"\n', ":2: kill_signal: must be 'SIGHUP'"),
        # restart, files
        ('app = "a"\n[[restart]]\npolicy = "sometimes"\n', "restart[0].policy: must be 'always', 'never'"),
        ('app = "a"\n[[files]]\nguest_path = "/x"\n', ":2: files[0]: set exactly one of raw_value, secret_name"),
        ('app = "a"\n[[files]]\nguest_path = "/x"\nlocal_path = "nope.txt"\n', ":4: files[0].local_path: cannot read"),
        # TOML syntax
        ('app = "a"\napp = "b"\n', ": invalid TOML: Cannot overwrite a value (at line 2, column 10)"),
        ('app = "a"\n[env]\nX = { y = 1 }\n', ":3: env.X: must be a string (got table)"),
    ],
)
def test_bad_input_gives_one_line_error_naming_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    msg = _error(tmp_path, text)
    assert expected in msg, msg


def test_error_counts_further_problems(tmp_path: Path) -> None:
    msg = _error(tmp_path, "app = 1\nprimary_region = 2\n")
    assert msg.startswith(":1: app: ") and msg.endswith("(and 1 more problems)")


def test_env_values_are_never_echoed_in_errors(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'app = "a"\n[env]\nAPI_TOKEN = ["s3cr3t-value"]\n')
    assert "env.API_TOKEN" in msg and "s3cr3t" not in msg


def test_unknown_keys_warn_with_did_you_mean(tmp_path: Path) -> None:
    warnings: list[str] = []
    text = (
        'app = "a"\nprimary_regoin = "ams"\n[http_service]\n  internal_prot = 8080\n'
        '[[vm]]\n  size = "shared-cpu-1x"\n  zzz = 1\n'
    )
    cfg = _load(tmp_path, text, warnings)
    assert cfg.primary_region is None
    where = str(tmp_path / "fly.toml")
    assert warnings == [
        f"{where}:2: primary_regoin: unknown key, ignored (did you mean 'primary_region'?)",
        f"{where}:4: http_service.internal_prot: unknown key, ignored (did you mean 'internal_port'?)",
        f"{where}: flyctl ignores these keys, so they have no effect: vm[0].zzz (line 7)",
    ]


def test_default_warning_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "fly.toml"
    p.write_text('app = "a"\nfoo = 1\n')
    load_fly_toml(p, allow_unknown_keys=True)
    assert capsys.readouterr().err == (
        f"nixfly: warning: {p}: flyctl ignores these keys, so they have no effect: foo (line 2)\n"
    )


def test_line_numbers_follow_dotted_keys_and_nested_arrays(tmp_path: Path) -> None:
    text = (
        'app = "a"\n'
        "[[services]]\n"
        "  internal_port = 80\n"
        "  [[services.ports]]\n"
        "    port = 80\n"
        "  [[services.ports]]\n"
        "    port = 443\n"
        "    handlers = ['tls', 5]\n"
    )
    assert ":8: services[0].ports[1].handlers[1]: must be a string (got integer 5)" in _error(tmp_path, text)
    multiline = 'app = "a"\nconsole_command = """\nfoo = 1\n"""\n[deploy]\nstrategy = "x"\n'
    assert _error(tmp_path, multiline).startswith(":6: deploy.strategy")
    dotted = 'app = "a"\ndeploy.strategy = "x"\n'
    assert _error(tmp_path, dotted).startswith(":2: deploy.strategy")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file; create one with `nixfly init`"):
        load_fly_toml(tmp_path / "fly.toml")


def test_local_path_files_are_read_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "motd").write_bytes(b"hello\x00world\n")
    cfg = _load(tmp_path, 'app = "a"\n[[files]]\nguest_path = "/etc/motd"\nlocal_path = "conf/motd"\n')
    assert cfg.files[0].raw_value is None
    assert base64.b64decode(cfg.files[0].machine_file()["raw_value"]) == b"hello\x00world\n"


def test_parse_from_text_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline:1: app: must be a string"):
        parse_fly_toml("app = []\n", source="inline")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15s", timedelta(seconds=15)),
        ("1m30s", timedelta(seconds=90)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("250ms", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
        ("2h", timedelta(hours=2)),
        ("100us", timedelta(microseconds=100)),
    ],
)
def test_go_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "10 s", "s", "-5s", "1d", "1.5.2s"])
def test_bad_go_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=15), "15s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1), "1h0m0s"),
        (timedelta(milliseconds=2500), "2.5s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(0), "0s"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=7), "7µs"),
    ],
)
def test_go_duration_strings_match_go(value: timedelta, expected: str) -> None:
    assert go_duration_string(value) == expected


@given(st.integers(min_value=0, max_value=10**12))
def test_go_duration_round_trips(micros: int) -> None:
    d = timedelta(microseconds=micros)
    assert parse_go_duration(go_duration_string(d)) == d


@pytest.mark.parametrize(
    ("value", "mb"),
    [
        (512, 512),
        ("512", 512),
        ("512mb", 512),
        ("512MB", 512),
        ("1gb", 1024),
        ("2GiB", 2048),
        ("1g", 1024),
        ("1.5gb", 1536),
        ("256m", 256),
    ],
)
def test_memory_sizes(value: int | str, mb: int) -> None:
    assert parse_memory_mb(value) == mb


@pytest.mark.parametrize("value", ["", "lots", "0", "12 parsecs", "-1gb"])
def test_bad_memory_sizes(value: str) -> None:
    with pytest.raises(ValueError):
        parse_memory_mb(value)


def test_shared_toml_positions() -> None:
    from nixfly.tomlpos import TomlPositions, dotted_path

    text = (
        'app = "a"\n'
        "[[services]]\n  internal_port = 1\n  [[services.ports]]\n    port = 80\n  [[services.ports]]\n    port = 443\n"
        '[[services]]\n  "internal_port" = 2\n'
        'desc = """\nport = 9\n"""\n'
        "[http_service.concurrency]\n  hard_limit = 5\n"
        "a.b.'c.d' = 1\n"
    )
    pos = TomlPositions(text)
    assert pos.line_of(("services", 0, "ports", 1, "port")) == 7
    assert pos.line_of(("services", 1, "internal_port")) == 9
    assert pos.exact_line(("services", 1, "port")) is None  # inside a multi-line string: not a key
    assert pos.line_of(("http_service", "concurrency", "hard_limit")) == 14
    assert pos.line_of(("http_service", "concurrency", "hard_limit", "deeper")) == 14
    assert pos.line_of(("http_service", "concurrency", "a", "b", "c.d")) == 15
    assert pos.line_of(("nowhere",)) is None
    assert dotted_path("image.users.0.uid") == ("image", "users", 0, "uid")


# -- flyctl's reading of older and looser spellings (issue 21 §1) -------------------------------------------


def _quiet(tmp_path: Path, text: str) -> tuple[FlyConfig, list[str]]:
    """Load without --allow-unknown-keys, collecting the warnings."""
    p = tmp_path / "fly.toml"
    p.write_text(text)
    notes: list[str] = []
    return load_fly_toml(p, warn=notes.append), notes


@pytest.mark.parametrize(
    ("processes", "groups"),
    [
        ("processes = []\n", ["app"]),
        ('processes = ["app"]\n', ["app"]),  # plain names are dropped: no [processes]
        ('processes = [{ name = "web", command = "srv -p 80" }, { name = "worker" }]\n', ["web", "worker"]),
    ],
)
def test_processes_array_is_upgraded_like_flyctl(tmp_path: Path, processes: str, groups: list[str]) -> None:
    cfg, notes = _quiet(
        tmp_path, f'app = "a"\n{processes}[[services]]\ninternal_port = 80\nprocesses = ["{groups[0]}"]\n'
    )
    assert cfg.process_groups() == groups and notes == []
    if "web" in groups:
        assert cfg.command_for("web") == ["srv", "-p", "80"] and cfg.command_for("worker") is None


def test_keys_flyctl_drops_are_reported_once_and_have_no_effect(tmp_path: Path) -> None:
    text = (
        'app = "a"\n[experimental]\nallowed_public_ports = []\nprivate_network = true\nauto_rollback = true\n'
        "[http_service]\ninternal_port = 8080\nmax_machines_running = 3\nenable_ha = false\n"
        "[[services]]\ninternal_port = 9000\nscript_checks = []\n[[services.ports]]\nport = 9000\nprotocol = 'tcp'\n"
        "[[redis]]\nplan = 'x'\n[scale]\ncount = 2\n"
    )
    cfg, notes = _quiet(tmp_path, text)
    assert len(notes) == 1, notes
    for key in ("experimental.allowed_public_ports (line 3)", "http_service.max_machines_running (line 8)",
                "http_service.enable_ha (line 9)", "services[0].script_checks (line 12)",
                "services[0].ports[0].protocol (line 15)", "redis (line 16)", "scale (line 18)"):  # fmt: skip
        assert key in notes[0]
    assert notes[0].startswith(f"{tmp_path / 'fly.toml'}: flyctl ignores these keys, so they have no effect: ")
    assert cfg.services[0].ports[0].model_extra == {"protocol": "tcp"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'app = "a"\n[http_servce]\ninternal_port = 80\n',
            ":2: http_servce: unknown key (did you mean 'http_service'?)",
        ),
        ('app = "a"\n[[services]]\ninternal_prot = 80\n', "services[0].internal_prot: unknown key (did you mean"),
        ('app = "a"\n[[restart]]\npolicy = "always"\nretires = 3\n', ":4: restart[0].retires: unknown key (did you"),
    ],
)
def test_typos_of_known_keys_are_still_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_string_ports_are_cast_and_bad_ones_refused(tmp_path: Path) -> None:
    cfg, _ = _quiet(tmp_path, 'app = "a"\n[[services]]\ninternal_port = "8080"\n[[services.ports]]\nport = "80"\n')
    assert cfg.services[0].internal_port == 8080 and cfg.services[0].ports[0].port == 80
    assert ":5: services[0].ports[0].port: must be an integer (got string 'eighty')" in _error(
        tmp_path, 'app = "a"\n[[services]]\ninternal_port = 80\n[[services.ports]]\nport = "eighty"\n'
    )


def test_singular_mount_and_compute_are_merged(tmp_path: Path) -> None:
    cfg, notes = _quiet(
        tmp_path,
        'app = "a"\n[processes]\nweb = "w"\nworker = "k"\n[mount]\nsource = "one"\ndestination = "/one"\n'
        'processes = ["web"]\n[[mounts]]\nsource = "two"\ndestination = "/two"\nprocesses = ["worker"]\n'
        '[[compute]]\nsize = "shared-cpu-2x"\n[[vm]]\nmemory = 1024\nprocesses = ["worker"]\n',
    )
    assert [(m.source, m.processes) for m in cfg.mounts] == [("one", ["web"]), ("two", ["worker"])]
    assert [(v.size, v.memory) for v in cfg.vm] == [("shared-cpu-2x", None), (None, "1024")]
    assert notes == []
    # An error inside the singular [mount] still names the line where it is written.
    assert _error(tmp_path, 'app = "a"\n[mount]\nsource = "d"\ndestination = "rel"\n').startswith(":2: mounts[0]:")


def test_keys_flyctl_knows_are_accepted(tmp_path: Path) -> None:
    cfg, notes = _quiet(
        tmp_path,
        'app = "a"\n[experimental]\nenable_consul = true\n[build]\nimage = "r/x:1"\nbuild_target = "worker"\n'
        'settings = { a = 1 }\nbuiltin = "node"\ncompression = "zstd"\ncompression_level = 3\n'
        '[deploy]\nrelease_command = "migrate"\nrelease_command_timeout = "10m"\nseed_command = "seed"\n'
        '[[mounts]]\nsource = "d"\ndestination = "/d"\nscheduled_snapshots = true\nsnapshot_retention = 7\n'
        '[[statics]]\nguest_path = "/s"\nurl_prefix = "/"\ntigris_bucket = "b"\nindex_document = "index.html"\n'
        '[[vm]]\nsize = "a100-40gb"\ngpu_kind = "a100-pcie-40gb"\ncpus = 6\n'
        '[[restart]]\npolicy = "on-failure"\nretries = 5\n',
    )
    assert cfg.build is not None and cfg.build.build_target == "worker"
    assert cfg.deploy.release_command_timeout == timedelta(minutes=10)
    assert cfg.restart[0].retries == 5 and cfg.vm[0].cpus == 6
    assert cfg.mounts[0].scheduled_snapshots is True
    # Only the Docker-build keys get a line: they are flyctl's, but mean nothing for an image nixfly deploys.
    assert notes == [
        f"{tmp_path / 'fly.toml'}: [build] build-target, settings, builtin, compression, compression_level: "
        "for flyctl's Docker build; nixfly deploys an image it is given, so not used"
    ]


def test_restart_max_retries_is_not_flyctls_key(tmp_path: Path) -> None:
    cfg, notes = _quiet(tmp_path, 'app = "a"\n[[restart]]\npolicy = "always"\nmax_retries = 3\n')
    assert cfg.restart[0].retries is None
    assert notes == [f"{tmp_path / 'fly.toml'}: flyctl ignores these keys, so they have no effect: "
                     "restart[0].max_retries (line 4) (flyctl's key is `retries`)"]  # fmt: skip


def test_an_array_of_concurrency_tables_is_refused_as_flyctl_refuses_it(tmp_path: Path) -> None:
    text = 'app = "a"\n[[services]]\ninternal_port = 80\n[[services.concurrency]]\nhard_limit = 25\n'
    msg = _error(tmp_path, text)
    assert msg.startswith(":4: services[0].concurrency: must be one table [services.concurrency]"), msg
    assert "flyctl refuses this too" in msg


def test_old_forms_of_concurrency_headers_checks_and_experimental(tmp_path: Path) -> None:
    cfg, notes = _quiet(
        tmp_path,
        'app = "a"\n[experimental]\nkill_timeout = 30\nmetrics_port = 9091\nmetrics_path = "/m"\n'
        '[[services]]\ninternal_port = 80\nconcurrency = "20,25"\n[[services.http_checks]]\npath = "/"\n'
        'headers = [{ name = "Host", value = "x" }]\n'
        '[[checks]]\nname = "alive"\ntype = "tcp"\nport = 80\n',
    )
    assert notes == []
    assert cfg.kill_timeout == timedelta(seconds=30)
    assert [(m.port, m.path) for m in cfg.metrics] == [(9091, "/m")]
    svc = cfg.services[0]
    assert svc.concurrency is not None and (svc.concurrency.type, svc.concurrency.soft_limit) == ("requests", 20)
    assert svc.concurrency.hard_limit == 25 and svc.http_checks[0].headers == {"Host": "x"}
    assert list(cfg.checks) == ["alive"]


def test_keys_match_case_insensitively_like_gos_json_decoder(tmp_path: Path) -> None:
    cfg, notes = _quiet(tmp_path, 'App = "a"\n[HTTP_Service]\nInternal_Port = 80\n[env]\nMixed_Case = "kept"\n')
    assert cfg.app == "a" and cfg.http_service is not None and cfg.http_service.internal_port == 80
    assert cfg.env == {"Mixed_Case": "kept"} and notes == []


def test_missing_app_is_asked_for_only_when_no_name_is_given(tmp_path: Path) -> None:
    cfg, _ = _quiet(tmp_path, 'primary_region = "ams"\n')
    assert cfg.app is None and cfg.app_name("from-flag") == "from-flag"
    assert _quiet(tmp_path, 'app = "in-file"\n')[0].app_name("from-flag") == "from-flag"  # --app wins
    with pytest.raises(ConfigError, match=r"fly.toml has no `app = \"NAME\"`; pass -a/--app NAME"):
        cfg.app_name()


def test_containers_are_refused_in_one_line(tmp_path: Path) -> None:
    assert ":2: machine_config: flyctl's containers" in _error(tmp_path, 'app = "a"\nmachine_config = "m.json"\n')


def test_max_unavailable_as_flyctl_counts_it() -> None:
    from nixfly.fly.plan import DeploySettings

    def batch(mu: float, n: int) -> int:
        return DeploySettings(app="a", strategy="rolling", max_unavailable=mu).batch_size(n)

    # getPoolSize: a fraction of the group rounds up; 1 or more is a count, a fractional count rounds down.
    assert [batch(0.33, 4), batch(0.5, 3), batch(0.1, 3), batch(1.0, 5), batch(1.5, 5), batch(3, 5)] == [
        2,
        2,
        1,
        1,
        1,
        3,
    ]


def test_deploy_without_app_anywhere_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nixfly.cli import main

    (tmp_path / "fly.toml").write_text('primary_region = "ams"\n')
    image = "registry.example/a@sha256:" + "a" * 64
    assert main(["deploy", "-c", str(tmp_path / "fly.toml"), "--image", image, "--api-url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == 'nixfly: fly.toml has no `app = "NAME"`; pass -a/--app NAME\n'
