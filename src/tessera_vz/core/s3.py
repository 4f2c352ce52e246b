"""S3 settings shared by every S3 client tessera-vz makes.

Three libraries talk to S3 here: obstore (header probes, listings,
discovery), icechunk's storage (the repositories) and icechunk's virtual
chunk containers (the tile sources). Each takes endpoint, region and
credentials in its own spelling, so one :class:`S3Settings` resolves them
once, from explicit options first and then the environment the way obstore
and icechunk read it, and renders them for each library.

Credentials are never copied into anything that is persisted or printed:
only endpoint, region, ``allow_http`` and path style go into a repository's
container config, and :meth:`S3Settings.public` is what may be logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import icechunk as ic

from tessera_vz.core.errors import ConfigurationError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Store

#: Keys an ``s3_options`` mapping may hold (with the aliases in ``_ALIASES``).
S3_KEYS = (
    "endpoint_url",
    "region",
    "allow_http",
    "anonymous",
    "force_path_style",
    "access_key_id",
    "secret_access_key",
    "session_token",
)
_ALIASES = {"endpoint": "endpoint_url", "skip_signature": "anonymous"}
#: Region assumed for an S3-compatible endpoint that names none (MinIO's and moto's default).
COMPATIBLE_REGION = "us-east-1"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(value: Any, option: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{option} expects true or false, got {value!r}")


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region, transport and credentials of one S3 service.

    ``access_key_id``/``secret_access_key``/``session_token`` are set only
    when given explicitly; otherwise each library reads the ``AWS_*``
    credentials from the environment itself (``from_env``), so they never
    pass through our code.
    """

    endpoint_url: str | None = None
    region: str | None = None
    allow_http: bool = False
    anonymous: bool = False
    force_path_style: bool = False
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def static(self) -> bool:
        """Whether explicit credentials were given."""
        return bool(self.access_key_id and self.secret_access_key)

    def public(self) -> dict[str, Any]:
        """The settings safe to log or record (no credentials)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "allow_http": self.allow_http,
            "anonymous": self.anonymous,
            "force_path_style": self.force_path_style,
        }

    # -- obstore -----------------------------------------------------------
    def obstore_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(config, client_options)`` for ``obstore.store.S3Store``."""
        config: dict[str, Any] = {}
        if self.endpoint_url:
            config["endpoint"] = self.endpoint_url
        if self.region:
            config["region"] = self.region
        if self.anonymous:
            config["skip_signature"] = True
        config["virtual_hosted_style_request"] = not self.force_path_style
        if self.static:
            config["access_key_id"] = self.access_key_id
            config["secret_access_key"] = self.secret_access_key
            if self.session_token:
                config["session_token"] = self.session_token
        client = {"allow_http": True} if self.allow_http else {}
        return config, client

    def obstore(
        self,
        url: str,
        *,
        config: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
        retry_config: RetryConfig | None = None,
    ) -> S3Store:
        """An obstore ``S3Store`` rooted at ``url`` (``s3://bucket/prefix/``).

        ``config`` and ``client_options`` add obstore keys to (or override)
        the ones these settings give.
        """
        import obstore.store

        ours, client = self.obstore_config()
        merged = {**ours, **(config or {})}
        client = {**client, **(client_options or {})}
        return obstore.store.S3Store.from_url(
            url,
            config=cast("S3Config", merged) if merged else None,
            client_options=cast("ClientConfig", client) if client else None,
            retry_config=retry_config,
        )

    # -- icechunk ----------------------------------------------------------
    def store_config(self) -> ic.ObjectStoreConfig.S3Compatible | ic.ObjectStoreConfig.S3:
        """Icechunk object-store config of a virtual chunk container (no credentials)."""
        return ic.s3_store(
            region=self.region,
            endpoint_url=self.endpoint_url,
            allow_http=self.allow_http,
            s3_compatible=bool(self.endpoint_url),
            force_path_style=self.force_path_style,
        )

    def storage(self, bucket: str, prefix: str) -> ic.Storage:
        """Icechunk storage of a repository at ``s3://bucket/prefix``."""
        creds: dict[str, Any]
        if self.anonymous:
            creds = {"anonymous": True}
        elif self.static:
            creds = {
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "session_token": self.session_token,
            }
        else:
            creds = {"from_env": True}
        return ic.s3_storage(
            bucket=bucket,
            prefix=prefix,
            region=self.region,
            endpoint_url=self.endpoint_url,
            allow_http=self.allow_http,
            force_path_style=self.force_path_style,
            **creds,
        )

    def credentials(self) -> ic.Credentials.S3:
        """Icechunk credentials authorising an ``s3://`` virtual chunk container."""
        cred: ic.AnyS3Credential
        if self.anonymous:
            cred = ic.s3_anonymous_credentials()
        elif self.static:
            cred = ic.s3_static_credentials(
                access_key_id=str(self.access_key_id),
                secret_access_key=str(self.secret_access_key),
                session_token=self.session_token,
            )
        else:
            cred = ic.s3_from_env_credentials()
        return ic.Credentials.S3(cred)


def s3_settings(
    options: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None
) -> S3Settings:
    """Resolve S3 settings: explicit ``options`` first, then the environment.

    Environment variables, as obstore and the AWS SDKs read them:
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``/``AWS_ENDPOINT``,
    ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``,
    ``AWS_SKIP_SIGNATURE`` (anonymous) and ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``.

    An ``http://`` endpoint implies ``allow_http`` (naming one is the
    request), and an explicit endpoint implies path-style requests and region
    ``us-east-1`` unless told otherwise, since S3-compatible servers on an IP
    address or ``localhost`` cannot serve ``bucket.host`` names.
    """
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = _ALIASES.get(key, key)
        if name not in S3_KEYS:
            raise ConfigurationError(
                f"unknown S3 option {key!r}; expected one of {', '.join(S3_KEYS)}"
            )
        if value is not None:
            opts[name] = value
    endpoint = opts.get("endpoint_url") or _env(
        env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"
    )
    region = opts.get("region") or _env(env, "AWS_REGION", "AWS_DEFAULT_REGION")
    if endpoint and not region:
        region = COMPATIBLE_REGION
    if "allow_http" in opts:
        allow_http = _flag(opts["allow_http"], "allow_http")
    elif (text := _env(env, "AWS_ALLOW_HTTP")) is not None:
        allow_http = _flag(text, "AWS_ALLOW_HTTP")
    else:
        allow_http = bool(endpoint and endpoint.startswith("http://"))
    if "anonymous" in opts:
        anonymous = _flag(opts["anonymous"], "anonymous")
    else:
        anonymous = _flag(_env(env, "AWS_SKIP_SIGNATURE") or "false", "AWS_SKIP_SIGNATURE")
    if "force_path_style" in opts:
        path_style = _flag(opts["force_path_style"], "force_path_style")
    elif (text := _env(env, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST")) is not None:
        path_style = not _flag(text, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
    else:
        path_style = bool(endpoint)
    if endpoint and endpoint.startswith("http://") and not allow_http:
        raise ConfigurationError(
            f"S3 endpoint {endpoint} is plain HTTP but allow_http is off; use an https:// "
            "endpoint or set allow_http (AWS_ALLOW_HTTP=true)"
        )
    return S3Settings(
        endpoint_url=endpoint,
        region=region,
        allow_http=allow_http,
        anonymous=anonymous,
        force_path_style=path_style,
        access_key_id=opts.get("access_key_id"),
        secret_access_key=opts.get("secret_access_key"),
        session_token=opts.get("session_token"),
    )


def split_options(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mapping into ``(s3_options, other options)``."""
    s3: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in (options or {}).items():
        (s3 if _ALIASES.get(key, key) in S3_KEYS else rest)[key] = value
    return s3, rest
