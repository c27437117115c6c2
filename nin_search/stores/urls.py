"""Store URLs as a user writes them: masked for printing (every password, in user:password@
or a query parameter) and checked before use (an '@' in a password, a missing driver), each
mistake one line that names the URL, masked."""

from __future__ import annotations

from urllib.parse import unquote

import sqlalchemy.exc
from sqlalchemy.engine import make_url

from nin_search.engine.config import ConfigError

# query parameters whose value is a secret: password, sslpassword, passwd, pwd, secret, token, ...
SECRET_PARTS = ("pass", "pwd", "secret", "token")


def _credentials_end(rest: str) -> int:
    """The index of the '@' that ends user:password in a URL's text after '//', or -1. The
    password may hold '@', ':' or '?' written as they are: the host follows the LAST '@' before
    the query, and the query starts at the first '?' after the first '@'."""
    first = rest.find("@")
    if first < 0:
        return -1
    query = rest.find("?", first)
    return rest.rfind("@", 0, query if query >= 0 else len(rest))


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for printing and logging: user:password@
    and password-like query parameters (?password=, ?sslpassword=, ?token=...). The rest is
    shown as it was written. SQLite URLs and plain paths hold no password and are returned as
    they are (a ':' or '@' in a path is part of the file's name)."""
    if url.startswith("sqlite:") or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    at = _credentials_end(rest) if not rest.startswith("/") else -1  # file:///a:b/c@d: a path
    if at > 0 and ":" in rest[:at]:
        rest = f"{rest[: rest.index(':')]}:***{rest[at:]}"
    head, sep, query = rest.partition("?")
    params = [p.partition("=") for p in query.split("&")] if sep else []
    query = "&".join(
        f"{k}=***" if eq and any(s in unquote(k).lower() for s in SECRET_PARTS) else k + eq + v
        for k, eq, v in params
    )
    return f"{scheme}://{head}{sep}{query}"


# the DB-API module SQLAlchemy imports for a database URL, and what provides it
DRIVERS = {
    "psycopg": "pip install 'nin-search[postgres]' (psycopg)",
    "psycopg2": "pip install psycopg2-binary, or write postgresql+psycopg:// and pip install "
    "'nin-search[postgres]'",
    "MySQLdb": "pip install mysqlclient, or write mysql+pymysql:// and pip install PyMySQL",
    "pymysql": "pip install PyMySQL",
}


def check_db_url(url: str, what: str) -> None:
    """A database server's URL (postgresql://, mysql+pymysql://, ...) that SQLAlchemy reads
    the way it was meant, with its driver installed; else a one-line ConfigError, `what` and
    the masked URL first. SQLite URLs and paths pass: they need no driver."""
    if url.startswith("sqlite:") or "://" not in url:
        return
    shown = f"{what} {mask(url)}"
    rest = url.split("://", 1)[1]
    # SQLAlchemy ends the password at its first '@' and reads the rest as host:port: a
    # ValueError that quotes a piece of the password, or another host. An '@' in the user
    # name (Azure's user@server) or in the query is read as meant
    at = _credentials_end(rest)
    if "@" in rest[:at].partition(":")[2]:
        raise ConfigError(
            f"{shown}: an '@' in the password must be written %40 (and ':' %3A, '/' %2F)"
        )
    try:
        dialect = make_url(url).get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(f"{shown}: SQLAlchemy knows no database {url.split(':')[0]!r}") from None
    except Exception:  # its message may quote the password: say what a URL looks like
        raise ConfigError(
            f"{shown} is not a database URL: expected dialect[+driver]://user:password@host"
            "[:port]/database, with '@', ':' and '/' in the password written %40, %3A, %2F"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        fix = DRIVERS.get(e.name or "", f"pip install the package that provides {e.name}")
        raise ConfigError(f"{shown}: its driver {e.name} is not installed; {fix}") from None
