"""The review web app: coders work the queues in a browser, supervisors watch the backlog.

Server-rendered pages (FastAPI/Starlette + Jinja2, served by uvicorn) over the Parquet queues and
the worklog, with a little JavaScript served from the package (no CDN). Modules:

accounts   users file (argon2 hashes, roles) and the bind policy: who may log in, from where
sessions   server-side sessions that expire, each with its CSRF token
middleware one ASGI layer for every request: host check, identity, CSRF, no-store, clean access log
findings   the queues as one cached frame: filters, sorting, paging, a finding's context
app        routes: pages, actions and the JSON API
"""
