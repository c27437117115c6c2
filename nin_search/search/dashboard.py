"""optuna-dashboard on a study: its note (where the rest of its record lives), the command that
opens it, and the server that `python -m nin_search dashboard` starts.

    python -m nin_search dashboard studies/quick.toml [--storage URL] [--port 8080]

optuna-dashboard is an optional extra (pip install 'nin-search[dashboard]'): without it a sweep
runs as before and only its note is left out. The server runs in this process on an opened
storage, so the storage URL (and its password) never goes on a command line.
"""

from __future__ import annotations

import shlex

import optuna

from nin_search.engine.config import ConfigError
from nin_search.reports.pages import ROOT, report_dir
from nin_search.search.storage import DEFAULT_STORAGE, open_storage
from nin_search.spec.study import Study
from nin_search.stores.urls import mask
from nin_search.tracking.store import ui_command

EXTRA = "optuna-dashboard is not installed: pip install 'nin-search[dashboard]'"


def dashboard_command(path: str, url: str) -> str:
    """The command that opens the dashboard on this study; a URL with a password is handed
    over in $NIN_SEARCH_STORAGE (shown masked), never as --storage, which `ps` shows."""
    cmd = f"python -m nin_search dashboard {shlex.quote(path)}"
    if url == DEFAULT_STORAGE:
        return cmd
    if mask(url) != url:
        return f"NIN_SEARCH_STORAGE={shlex.quote(mask(url))} {cmd}"
    return f"{cmd} --storage {shlex.quote(url)}"


def _heading(name: str) -> str:
    return f"## {name} (nin-search)"


def note_text(study: Study, url: str, exp_id: str, parent: str, tracking: str) -> str:
    """The study's note in Markdown: its study file, MLflow experiment and parent run, and
    report folder, with the commands that open each."""
    names = ", ".join(f"`{n}`" for n in study.objectives or [study.objective])
    return "\n".join(
        [
            _heading(study.name),
            "",
            f"- {study.kind}, objective {names}",
            f"- study file: `{study.path}`",
            f"- Optuna storage: `{mask(url)}`",
            f"- MLflow: experiment `{study.name}` (id {exp_id}), parent run `{parent}` in "
            f"`{mask(tracking)}`; open the UI with `{ui_command(tracking)}`",
            f"- report: `{report_dir(ROOT, study.name)}/index.html` (`python -m nin_search "
            f"report {shlex.quote(study.path)}` writes it)",
        ]
    )


def write_note(ostudy: optuna.Study, text: str) -> None:
    """Save the note with optuna-dashboard, when it is installed and the note changed. A note
    of the user's own (any other heading, written in the dashboard) is left as it is."""
    try:
        from optuna_dashboard import get_note, save_note
    except ImportError:  # an optional extra: the sweep runs without its note
        return
    now = get_note(ostudy)
    if now != text and (not now.strip() or now.startswith(_heading(ostudy.study_name) + "\n")):
        save_note(ostudy, text)


def study_page(host: str, port: int, study_id: int) -> str:
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def serve(ostudy: optuna.Study, url: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's storage at host:port until Ctrl-C, after printing
    the study's page. The caller checks that host resolves and the port is free."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    require()
    from optuna_dashboard import wsgi

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6

    class Server(ThreadingMixIn, WSGIServer):  # as optuna-dashboard's own CLI serves it
        address_family = family
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args) -> None:  # one line per request otherwise
            pass

    storage = open_storage(url)
    page = study_page(host, port, storage.get_study_id_from_name(ostudy.study_name))
    try:
        httpd = make_server(host, port, wsgi(storage), server_class=Server, handler_class=Quiet)
    except OSError as e:  # taken since the caller's check
        raise ConfigError(f"--port {port} on {host} is not free: {e.strerror}") from None
    print(f"optuna-dashboard on study {ostudy.study_name!r} in {mask(url)}", flush=True)
    print(f"open {page} (Ctrl-C stops it)", flush=True)
    try:
        httpd.serve_forever()  # Ctrl-C: cli.main's "interrupted", exit 130, as `ui`
    finally:
        httpd.server_close()


def require() -> None:
    """ConfigError naming the extra unless optuna-dashboard is installed."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA) from None
