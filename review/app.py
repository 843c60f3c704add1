"""The review page (Streamlit). Run: ``linewatch-review serve --config configs/review.default.yaml``.

The config path comes from ``--config`` after ``--``, else ``$LINEWATCH_REVIEW_CONFIG``, else
``configs/review.default.yaml``. Everything but the log-in form needs a logged-in user.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# `streamlit run review/app.py` puts review/ on sys.path (so `stats` or `config` would shadow other modules),
# not the repository: swap them.
_HERE, _REPO = Path(__file__).resolve().parent, str(Path(__file__).resolve().parents[1])
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _HERE]
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from edge_agent.errors import LinewatchError  # noqa: E402
from review.config import ReviewConfig  # noqa: E402
from review.views import guide, inspection, models, queue, statistics  # noqa: E402
from review.views.common import Context, cached_authenticator, cached_config, cached_store  # noqa: E402

log = logging.getLogger("review")

DEFAULT_CONFIG = "configs/review.default.yaml"
CONFIG_ENV = "LINEWATCH_REVIEW_CONFIG"
VIEWS = {
    "Inspect": inspection.render,
    "Review queue": queue.render,
    "Statistics": statistics.render,
    "Models": models.render,
    "Guide": guide.render,
}


def config_path(argv: list[str] | None = None) -> Path:
    """``--config`` from the script arguments, else the environment variable, else the default."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _load() -> ReviewConfig | None:
    path = config_path()
    try:
        cfg = cached_config(str(path), path.stat().st_mtime)
    except FileNotFoundError:
        st.error(f"Config file {path} not found.")
        return None
    except LinewatchError as err:
        st.error("The review config is invalid.")
        st.code(str(err), language="text")
        return None
    logging.getLogger("review").setLevel(cfg.log_level)
    return cfg


def login_form(cfg: ReviewConfig) -> None:
    """The log-in form; on success the user is kept in the session and the page reruns."""
    st.title(cfg.title)
    path = config_path()
    with st.form("login", clear_on_submit=True):
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
    if submitted:
        user = cached_authenticator(str(path), path.stat().st_mtime).login(name.strip(), password)
        if user is None:
            st.error("Wrong user name or password (or too many attempts: wait a minute).")
            return
        st.session_state["user"] = user
        st.rerun()


def sidebar(ctx: Context) -> str:
    """Navigation, the user's name and role, log-out, and the S3 sync button when reading from S3."""
    with st.sidebar:
        st.header(ctx.cfg.title)
        role_note = "may record feedback" if ctx.user.can_write else "read-only"
        st.caption(f"Logged in as **{ctx.user.name}** ({ctx.user.role}: {role_note})")
        page = st.radio("Page", list(VIEWS), key="nav_page")
        if ctx.cfg.source.type == "s3" and st.button("Sync from S3", key="s3_sync"):
            from review.s3_source import sync_from_s3

            with st.spinner("Reading the S3 mirror..."):
                report = sync_from_s3(ctx.cfg.source, ctx.store)
            st.caption(f"S3: {report.added} new verdicts, {report.errors} errors")
        if st.button("Log out", key="logout"):
            st.session_state.pop("user", None)
            st.rerun()
        st.caption("Times are UTC.")
    return str(page)


def main() -> None:
    """Render the page for this run."""
    st.set_page_config(page_title="linewatch review", layout="wide")
    cfg = _load()
    if cfg is None:
        return
    user = st.session_state.get("user")
    if user is None:
        login_form(cfg)
        return
    try:
        store = cached_store(cfg.database.url, cfg.database.busy_timeout_ms)
    except Exception as err:  # the database is down or unreadable: say so, without a trace or the URL's password
        log.error("database not available: %s", type(err).__name__)
        st.error(f"The verdict database is not available ({type(err).__name__}).")
        return
    ctx = Context(cfg, store, user)
    page = sidebar(ctx)
    VIEWS[page](ctx)


if __name__ == "__main__":
    main()
