"""The built-in demo, end to end on this machine with no Docker and no network:

offline Nix builds a small web app (busybox httpd showing $APP_ECHO_ME) → ``nixfly build`` makes a
layered OCI image → a real registry starts on 127.0.0.1 → ``nixfly push`` → ``nixfly run`` pulls the
pushed image by digest and serves it → curl reads the page → ``nixfly deploy`` sends it to the local
Fly Machines API stand-in (spec-validated) and shows the plan. Everything it starts is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.nixstore import make_busybox_dir, nix_env  # noqa: E402
from tests.support.registry import free_port, start_registry  # noqa: E402

NIXFLY = [sys.executable, "-m", "nixfly"]
MESSAGE = "hello from the nixfly demo"


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"==> {title}", flush=True)
    t0 = time.monotonic()
    yield
    print(f"    done in {time.monotonic() - t0:.2f}s", flush=True)


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: {' '.join(argv[:3])} … failed:\n{proc.stderr.strip()}")
    return proc.stdout


def fetch(url: str, deadline: float) -> str:
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError as e:
            last = str(e)
            time.sleep(0.2)
    sys.exit(f"demo: {url} never answered ({last})")


def stop(proc: subprocess.Popen[str]) -> None:
    """TERM goes to the container; httpd as PID 1 ignores it, so a second TERM makes nixfly kill it."""
    for sig in (signal.SIGTERM, signal.SIGTERM):
        proc.send_signal(sig)
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nixfly-demo."))
    env = {**nix_env(), "XDG_CACHE_HOME": str(work / "cache")}
    started = time.monotonic()
    try:
        with step("offline Nix builds the web app closure (busybox httpd + a CGI page)"):
            bb = make_busybox_dir(work)
            app = sh("nix-build", str(ROOT / "demo" / "webecho.nix"), "--arg", "bbdir", str(bb), "-A", "webecho",
                     "--no-out-link", env=env).strip()  # fmt: skip
            closure = sh("nix-store", "-qR", app, env=env).split()
            print(f"    {app} ({len(closure)} store paths)")

        layout = work / "webecho.oci"
        with step("nixfly build: closure → layered OCI image"):
            out = sh(*NIXFLY, "build", app, "-o", f"oci:{layout}:demo", "--entrypoint", "/bin/webecho",
                     "--port", "8080", "-e", "PORT=8080", "--json", env=env)  # fmt: skip
            summary = json.loads(out)
            for layer in summary["layers"]:
                paths = ", ".join(p.rsplit("/", 1)[-1] for p in layer["store_paths"]) or layer["kind"]
                print(f"    {layer['digest'][:19]}  {layer['size']:>9} B  {paths}")
            print(f"    manifest {summary['digest']}")

        with start_registry(work / "registry") as reg:
            print(f"==> a real registry (docker-registry) listening on {reg.url}")
            with step("nixfly push: upload only what the registry lacks"):
                pushed = json.loads(sh(*NIXFLY, "push", f"oci:{layout}:demo", f"{reg.host}/webecho:demo", "--json",
                                       env=env))  # fmt: skip
                reference = pushed["reference"]
                print(f"    {reference}")
                again = json.loads(sh(*NIXFLY, "push", f"oci:{layout}:demo", f"{reg.host}/webecho:demo", "--json",
                                      env=env))  # fmt: skip
                uploaded = again.get("uploaded_bytes", "?")
                print(f"    second push uploaded {uploaded} blob bytes")

            port = free_port()
            with step(f"nixfly run {reference.split('@')[0]}@… serving on 127.0.0.1:{port}"):
                proc = subprocess.Popen(
                    [*NIXFLY, "run", reference, "-e", f"APP_ECHO_ME={MESSAGE}", "-e", f"PORT={port}"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                try:
                    page = fetch(f"http://127.0.0.1:{port}/cgi-bin/index.cgi", time.monotonic() + 60)
                finally:
                    stop(proc)
                print("    " + " ".join(page.split()))
                if f"APP_ECHO_ME={MESSAGE}" not in page:
                    sys.exit("demo: the page does not show APP_ECHO_ME")

            deploy_demo(work, reg.url, reg.host, reference, env)
        print(f"==> demo finished in {time.monotonic() - started:.1f}s; everything it started is stopped")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deploy_demo(work: Path, registry_url: str, registry_host: str, reference: str, env: dict[str, str]) -> None:
    from tests.support.flystandin import TOKEN, FlyStandin
    from werkzeug.serving import make_server

    standin = FlyStandin(registry_url=registry_url, registry_host=registry_host)
    server = make_server("127.0.0.1", 0, standin.wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_port}/v1"
    standin.url = api
    standin.create_app("webecho-demo")
    fly_toml = work / "fly.toml"
    fly_toml.write_text(
        'app = "webecho-demo"\nprimary_region = "ams"\n\n[env]\n  APP_ECHO_ME = "deployed by nixfly"\n\n'
        "[http_service]\n  internal_port = 8080\n  force_https = true\n\n"
        "[[vm]]\n  size = \"shared-cpu-1x\"\n"
    )
    denv = {**env, "FLY_API_TOKEN": TOKEN, "FLY_API_URL": api}
    try:
        with step("nixfly deploy --dry-run against the local Fly Machines API stand-in"):
            plan = sh(*NIXFLY, "deploy", "--config", str(fly_toml), "--image", reference, "--dry-run", env=denv)
            print("    " + "\n    ".join(plan.strip().splitlines()))
        with step("nixfly deploy (every request validated against Fly's OpenAPI spec)"):
            out = json.loads(sh(*NIXFLY, "deploy", "--config", str(fly_toml), "--image", reference, "--json", env=denv))
            print("    " + json.dumps(out, sort_keys=True)[:400])
    finally:
        server.shutdown()
        thread.join(timeout=10)
    if standin.violations:
        sys.exit("demo: Machines API spec violations:\n" + "\n".join(standin.violations))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
