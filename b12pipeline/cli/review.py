"""`b12pipeline review`: the review web app for coders and supervisors, and its users.

`review --out DIR` serves on 127.0.0.1:8050 with no login (the person at this machine, as the OS
user). Any other --host needs `review adduser NAME` first, or --proxy-user-header behind a reverse
proxy that authenticates people; otherwise the command refuses to start (exit 2).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from b12pipeline.cli.common import console, err_console, usage_error


def register(app: typer.Typer) -> None:
    review_app = typer.Typer(
        invoke_without_command=True,
        no_args_is_help=False,
        help="Serve the review web app over the work queues (see docs/review.md).",
    )
    app.add_typer(review_app, name="review")

    @review_app.callback()
    def review(
        ctx: typer.Context,
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root the nightly run writes to."),
        host: str = typer.Option("127.0.0.1", help="Address to listen on; beyond loopback, logins are required."),
        port: int = typer.Option(8050, help="Port to listen on."),
        users: Optional[Path] = typer.Option(None, help="Users file (default: <out>/review/users.json)."),
        proxy_user_header: Optional[str] = typer.Option(
            None, help="Trust this header (e.g. X-Remote-User) from --trusted-proxy as the signed-in user."
        ),
        trusted_proxy: list[str] = typer.Option(
            ["127.0.0.1", "::1"], help="Address of the reverse proxy whose user header is trusted (repeatable)."
        ),
        rules: Optional[Path] = typer.Option(None, help="Rules folder (default: the project's rules/)."),
    ) -> None:
        """Serve the queues, each finding's context, actions and the supervisor dashboard."""
        if ctx.invoked_subcommand is not None:
            return
        from b12pipeline.review.accounts import AccountError, BindRefused, check_bind, default_users_file

        users_file = users or default_users_file(out)
        if not (out / "queues").is_dir():
            raise usage_error(f"no work queues under {out}; run `b12pipeline nightly` first")
        if not 0 < port < 65536:
            raise usage_error(f"--port {port} is not a port number")
        try:
            mode = check_bind(host, users_file, proxy_user_header)
        except (BindRefused, AccountError) as exc:
            raise usage_error(str(exc)) from None
        serve(out, host, port, mode, users_file, proxy_user_header, frozenset(trusted_proxy), rules)

    @review_app.command("adduser")
    def adduser(
        name: str = typer.Argument(..., help="The user's sign-in name."),
        out: Path = typer.Option(Path("var"), "--out", "-o", help="Output root (the users file lives under it)."),
        role: str = typer.Option("coder", help="coder (acts on findings) or supervisor (also bulk and dashboard)."),
        users: Optional[Path] = typer.Option(None, help="Users file (default: <out>/review/users.json)."),
        password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    ) -> None:
        """Add a user (or set a user's password and role) in the users file, as an argon2id hash."""
        from b12pipeline.review.accounts import AccountError, add_user, default_users_file

        users_file = users or default_users_file(out)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            is_new = add_user(users_file, name, password, role)
        except AccountError as exc:
            raise usage_error(str(exc)) from None
        console.print(f"{'added' if is_new else 'updated'} {name} ({role}) in {users_file}")


def serve(out, host, port, mode, users_file, proxy_header, trusted_proxies, rules) -> None:
    import uvicorn

    from b12pipeline.review.app import Settings, build_app

    app = build_app(
        Settings(
            out=out,
            mode=mode,
            users_file=users_file,
            proxy_header=proxy_header,
            trusted_proxies=trusted_proxies,
            rules_dir=rules,
        )
    )
    app.app.state.review.findings()  # read the queues and the worklog now, not on the first click
    # Our access log names route templates only; uvicorn's would print every path and query string.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    login = {
        "local": "no login (loopback)",
        "password": f"logins from {users_file}",
        "proxy": f"user from {proxy_header}",
    }
    err_console.print(f"review app on http://{host}:{port}/ over {out}: {login[mode]} (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, server_header=False)
