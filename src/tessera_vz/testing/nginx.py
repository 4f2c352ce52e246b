"""nginx serving a tile tree: :mod:`tessera_vz.mirror.nginx`, under its older name.

The demo serves its tree with it too, so it lives in the product; tests
keep importing it from here.
"""

from tessera_vz.mirror.nginx import (
    LOG_FIELDS,
    NGINX_FALLBACK,
    NOT_FOUND_MESSAGE,
    Certificate,
    NginxServer,
    find_nginx,
    parse_log_line,
    serve_forever,
)

__all__ = [
    "LOG_FIELDS",
    "NGINX_FALLBACK",
    "NOT_FOUND_MESSAGE",
    "Certificate",
    "NginxServer",
    "find_nginx",
    "parse_log_line",
    "serve_forever",
]
