"""Fetching: stream a dataset's URL (http://, https:// or file://) into a local file.

The download goes in chunks with a tqdm progress bar on stderr (by default only when stderr is a
terminal). Every way it can fail on the way (HTTP status, unreachable host, timeout, a full disk)
becomes a one-line :class:`~recrl.types.RecrlError` that says how to fetch the data by hand. The
request goes through ``urllib.request.urlopen``, looked up on the module at call time.
"""

from __future__ import annotations

import http.client
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from recrl.data.download.catalogue import CHUNK_BYTES, HELP_POINTER
from recrl.types import RecrlError

URL_SCHEMES = ("http", "https", "file")
TIMEOUT_S = 60.0
USER_AGENT = "recrl-data-download/0.1 (+https://pypi.org/project/recrl)"


def resolve_url(url: str) -> str:
    """``url`` as an http(s):// or file:// URL; a plain path becomes a file:// URL."""
    if "://" not in url:
        return Path(url).expanduser().resolve().as_uri()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise RecrlError(f"unsupported URL scheme in {url}; use an http://, https:// or file:// URL "
                         f"or a local path")
    return url


def _network_error(url: str, reason: object, folder: Path) -> RecrlError:
    """The one-line error for a download that failed on the way."""
    return RecrlError(f"could not download {url}: {reason}; download it by hand into {folder} "
                      f"({HELP_POINTER})")


def fetch_file(url: str, dest: Path, folder: Path, *, label: str, progress: bool | None) -> None:
    """Stream ``url`` into ``dest`` in chunks with a progress bar (``progress=None``: only when
    stderr is a terminal)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=None if progress is None else not progress, file=sys.stderr) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise _network_error(url, f"HTTP {err.code} {err.reason}", folder) from err
    except urllib.error.URLError as err:
        raise _network_error(url, err.reason, folder) from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _network_error(url, str(err) or type(err).__name__, folder) from err
    except OSError as err:
        raise RecrlError(f"could not write {dest}: {err}; check the free space and permissions of the "
                         f"data dir") from err
