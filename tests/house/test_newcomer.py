"""The newcomer's path (issue 18, items 1-5): what a first user sees, checked as they would see it.

Each test runs the real command (invoke, ./dev's own bash functions, verify against a real HTTP server)
and reads its output: no traceback, one block of advice, nothing cut or raw.
"""
from __future__ import annotations

import fcntl
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """This machine as one without GitHub: every https fetch goes to a closed port (curl, git and urllib
    all honour the proxy variables); an empty store, no mirror directory."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "mini_vllm_mirror")}
    closed = "http://127.0.0.1:9"
    env.update(https_proxy=closed, HTTPS_PROXY=closed, http_proxy=closed, HTTP_PROXY=closed,
               MINI_VLLM_CACHE=str(tmp_path / "store"), MINI_VLLM_EXT_DIR=str(tmp_path / "ext"), COLUMNS="200")
    return env


@pytest.mark.parametrize("argv", [
    ["fetch"],
    pytest.param(["kernels", "--only", "fa3"],
                 marks=pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")),
    ["fetch", "--mirror-dir", "EMPTY"],
])
def test_unreachable_sources_end_in_one_advice_block(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    t0 = time.monotonic()
    r = subprocess.run([INVOKE, *argv], cwd=ROOT, env=_offline_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "Traceback" not in text and "URLError" not in text and "CalledProcessError" not in text, text
    assert text.count("error: cannot fetch the pinned source") == 1, text
    for advice in ("--mirror-dir DIR (or MINI_VLLM_MIRROR=DIR)", "make_source_mirror.py --from-github",
                   "invoke kernels --only ours", "--offline"):
        assert advice in text, text
    tried = [ln.split(": ")[0].strip() for ln in r.stderr.splitlines() if ln.startswith("    https://")
             or ln.startswith("    git+https://")]
    assert len(tried) == 2 and len(set(tried)) == 2, text              # each mirror once, in the block
    assert all(text.count(u + ": ") == 1 for u in tried), text
    if "--mirror-dir" in argv:
        assert f"mirror directory {tmp_path / 'empty'}: holds no" in text
    assert time.monotonic() - t0 < 120


def _dev(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run bash with ./dev's functions defined (DEV_FUNCTIONS_ONLY=1: nothing installed, nothing run)."""
    full = {**os.environ, "DEV_FUNCTIONS_ONLY": "1", **env}
    return subprocess.run(["bash", "-c", f"source ./dev; {script}"], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=60)


def test_dev_says_each_step_and_its_time() -> None:
    r = _dev('step "unpacking things" sleep 0.3; step "a failing step" false || echo rc=$?')
    lines = r.stderr.splitlines()
    assert lines[0] == "[dev] unpacking things ..."
    assert lines[1].startswith("[dev] unpacking things: done (0.") and lines[1].endswith(" s)")
    assert "[dev] a failing step: FAILED after" in r.stderr and "rc=1" in r.stdout


def test_dev_shows_pip_progress_not_noise() -> None:
    r = _dev("{ printf 'Collecting torch==2.13.0+cpu\\n  Using cached x.whl\\nProcessing /w/numpy.whl\\n"
             "Requirement already satisfied: y\\nInstalling collected packages: numpy, torch\\n"
             "Successfully installed numpy-2 torch-2.13.0+cpu\\n'; printf 'ERROR: No matching distribution\\n"
             "  for torch==9\\n'; } | show_pip")
    assert r.stderr.splitlines() == ["[dev]   ... 1 package so far (torch==2.13.0+cpu)",
                                     "[dev]   installing 2 packages ...", "[dev]   installed 2 packages",
                                     "[dev]   ERROR: No matching distribution", "[dev]     for torch==9"]


def test_dev_asks_for_the_cpu_torch_with_pytorchs_index_as_an_extra() -> None:
    r = _dev('echo "$torch_req $torch_index"')
    assert r.stdout.split() == ["torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu"]
    assert '--extra-index-url "$torch_index"' in (ROOT / "dev").read_text()


def test_dev_waits_for_the_apt_lock_then_gives_up_clearly(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_EX)                      # as apt-get / dpkg hold it
    try:
        t0 = time.monotonic()
        r = _dev("wait_for_apt", MINI_VLLM_APT_LOCKS=str(lock), MINI_VLLM_APT_WAIT="2")
        assert r.returncode == 1 and 2 <= time.monotonic() - t0 < 30
        assert "[dev] waiting for the apt/dpkg lock: another apt-get, dpkg or unattended-upgrades is running" in r.stderr
        assert "still held after 2 s" in r.stderr and "run ./dev again" in r.stderr

        threading.Timer(1.0, os.close, [fd]).start()    # the other apt finishes while we wait
        r = _dev("wait_for_apt", MINI_VLLM_APT_LOCKS=str(lock), MINI_VLLM_APT_WAIT="30")
        assert r.returncode == 0 and "the apt/dpkg lock is free (waited" in r.stderr, r.stderr
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert _dev("wait_for_apt", MINI_VLLM_APT_LOCKS=str(lock)).stderr == ""   # free: not a word


def _tasks():
    spec = importlib.util.spec_from_file_location("mini_vllm_tasks", ROOT / "tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from invoke import Collection

    col = Collection.from_module(mod)
    return {name: col[name].get_arguments() for name in col.task_names}


def test_one_meaning_per_short_flag_and_every_help_says_its_default() -> None:
    owners: dict[str, set[str]] = {}
    undocumented = []
    for task, args in _tasks().items():
        for a in args:
            if not any(w in (a.help or "").lower() for w in ("default", "(required")):   # required: none
                undocumented.append(f"invoke {task} --{a.name.replace('_', '-')}: {a.help!r}")
            for n in a.names:
                if len(n) == 1:
                    owners.setdefault(n, set()).add(a.name)
    assert undocumented == []
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}
    assert "t" not in owners and "p" not in owners and "a" not in owners   # the letters that used to clash


def test_serve_help_describes_host_and_port() -> None:
    r = subprocess.run([sys.executable, "-m", "mini_vllm.cli", "serve", "--help"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "COLUMNS": "200"})
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip().startswith("--")}
    for flag in ("--host", "--port"):
        assert len(lines[flag].split()) > 2 and "default" in lines[flag], lines.get(flag)


class _Server(http.server.BaseHTTPRequestHandler):
    """Answers like an OpenAI server whose model generated control characters and a bidi override."""

    TEXT = "Paris\x1b[2J\x07\u202e!\n"

    def log_message(self, *a: object) -> None:
        pass

    def _json(self, code: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "x"}]})
        else:
            self._json(404, {"error": {"message": "no [bold]such\x1b[31m thing"}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/completions":
            self._json(200, {"id": "c", "object": "text_completion", "created": 0, "model": "tiny",
                             "choices": [{"index": 0, "text": self.TEXT, "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}})
        else:
            self._json(400, {"error": {"message": f"bad\x00 request\x1b]0;pwned\x07 {self.TEXT}"}})


def test_verify_escapes_what_the_server_sent(capsys: pytest.CaptureFixture[str]) -> None:
    from minibuild.config import load_config
    from minibuild.verify import verify

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert verify(load_config(), url=f"http://127.0.0.1:{srv.server_address[1]}") is False
    finally:
        srv.shutdown()
        srv.server_close()
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x00\u202e"), repr(out)
    assert "\\x1b[2J\\x07\\u202e" in out and "completion" in out        # shown, escaped


def test_status_never_cuts_what_a_user_copies(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-directory-name-" * 4) / "rollout"
    local = deep / "local"
    local.mkdir(parents=True)
    url = "http://127.0.0.1:65501"
    log = local / "mini-vllm-a-model-with-a-rather-long-served-name.log"
    (local / "mini-vllm-a-model-with-a-rather-long-served-name.json").write_text(json.dumps({
        "pid": 999999, "port": 65501, "url": url, "log": str(log), "argv": [], "tp": 1,
        "model": str(tmp_path / "m"), "served_name": "a-model-with-a-rather-long-served-name"}))
    env = {**os.environ, "MINI_VLLM_ROLLOUT_DIR": str(deep)}
    env.pop("COLUMNS", None)
    r = subprocess.run([INVOKE, "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert url in r.stdout and str(log) in r.stdout and "…" not in r.stdout, r.stdout
