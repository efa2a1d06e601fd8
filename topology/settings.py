"""How every process reaches Kafka: one settings model, two client dialects.

Declared once with the ``KAFKA_`` env prefix; turned into librdkafka config
(confluent-kafka, used by sources and sinks) and aiokafka/Faust kwargs (used by
the stream agents) so TLS and SASL settings pass through identically.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from topology.oauth import ClientCredentialsTokenProvider

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class KafkaSettings(BaseSettings):
    """Connection settings for the Kafka cluster (env prefix ``KAFKA_``)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="forbid")

    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; unset means: start the embedded broker"
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: str | None = None
    sasl_oauthbearer_scope: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(default=6000, ge=1000)
    fetch_wait_max_ms: int | None = Field(
        default=None, ge=1, le=60000,
        description="how long a consumer's fetch may wait for data; unset: the client's default, or 50 ms on "
                    "the embedded broker (topology.broker.fetch_wait_ms)",
    )
    client_id: str = "clinstream"
    compression_type: CompressionType = Field(
        default="zstd",
        description="record batch compression of the producers; the broker stores batches as sent, so this "
                    "is its memory (embedded broker) or disk per event",
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError("KAFKA_SASL_MECHANISM is required when KAFKA_SECURITY_PROTOCOL uses SASL")
        if self.sasl_mechanism is not None and not sasl:
            # Credentials configured but never sent: fail instead of connecting unauthenticated.
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism} needs KAFKA_SECURITY_PROTOCOL=SASL_SSL or "
                f"SASL_PLAINTEXT, got {self.security_protocol}"
            )
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required for {self.sasl_mechanism}"
            )
        if self.sasl_mechanism == "OAUTHBEARER":
            missing = [
                f"KAFKA_{name.upper()}"
                for name in (
                    "sasl_oauthbearer_token_endpoint_url",
                    "sasl_oauthbearer_client_id",
                    "sasl_oauthbearer_client_secret",
                )
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"{', '.join(missing)} required for OAUTHBEARER (client-credentials flow)")
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> KafkaSettings:
        tls = self.security_protocol.endswith("SSL")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password"):
            if getattr(self, name) and not tls:
                # A CA or client cert with PLAINTEXT means someone believes traffic is encrypted.
                raise ValueError(
                    f"KAFKA_{name.upper()} is set but KAFKA_SECURITY_PROTOCOL={self.security_protocol} does not use TLS"
                )
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ValueError("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together (mTLS)")
        return self

    def with_bootstrap(self, bootstrap: str) -> KafkaSettings:
        return self.model_copy(update={"bootstrap_servers": bootstrap})

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS or start the broker")
        return self.bootstrap_servers

    def librdkafka(self, **extra: Any) -> dict[str, Any]:
        """Config dict for confluent-kafka Producer/Consumer/AdminClient."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.require_bootstrap(),
            "security.protocol": self.security_protocol.lower(),
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                if self.sasl_oauthbearer_token_endpoint_url:
                    conf["sasl.oauthbearer.method"] = "oidc"
                    conf["sasl.oauthbearer.token.endpoint.url"] = self.sasl_oauthbearer_token_endpoint_url
                    conf["sasl.oauthbearer.client.id"] = self.sasl_oauthbearer_client_id or ""
                    conf["sasl.oauthbearer.client.secret"] = self.sasl_oauthbearer_client_secret or ""
                    if self.sasl_oauthbearer_scope:
                        conf["sasl.oauthbearer.scope"] = self.sasl_oauthbearer_scope
            else:
                conf["sasl.username"] = self.sasl_username
                conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            conf["ssl.certificate.location"] = self.ssl_certificate_location
        if self.ssl_key_location:
            conf["ssl.key.location"] = self.ssl_key_location
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password
        if self.security_protocol.endswith("SSL") and not self.ssl_check_hostname:
            conf["ssl.endpoint.identification.algorithm"] = "none"
        conf.update(extra)
        return conf

    def librdkafka_producer(self, **extra: Any) -> dict[str, Any]:
        """Config for every clinstream producer: idempotent, ``acks=all``, batches compressed as configured."""
        return self.librdkafka(**{"enable.idempotence": True, "acks": "all",
                                  "compression.type": self.compression_type, **extra})

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_ca_location)
        ctx.check_hostname = self.ssl_check_hostname
        if self.ssl_certificate_location:
            ctx.load_cert_chain(
                self.ssl_certificate_location, self.ssl_key_location, password=self.ssl_key_password
            )
        return ctx

    def oauth_token_provider(self) -> ClientCredentialsTokenProvider:
        """aiokafka token provider for OAUTHBEARER (librdkafka fetches its own tokens)."""
        if self.sasl_mechanism != "OAUTHBEARER":
            raise ValueError(f"KAFKA_SASL_MECHANISM is {self.sasl_mechanism}, not OAUTHBEARER")
        from topology.oauth import ClientCredentialsTokenProvider

        assert self.sasl_oauthbearer_token_endpoint_url and self.sasl_oauthbearer_client_id  # validated above
        return ClientCredentialsTokenProvider(
            self.sasl_oauthbearer_token_endpoint_url,
            self.sasl_oauthbearer_client_id,
            self.sasl_oauthbearer_client_secret or "",
            scope=self.sasl_oauthbearer_scope,
        )

    def faust_broker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``faust.App`` (aiokafka underneath)."""
        import faust

        kwargs: dict[str, Any] = {
            "broker": ",".join(f"kafka://{h}" for h in self.require_bootstrap().split(",")),
            "broker_session_timeout": self.session_timeout_ms / 1000,
            "broker_heartbeat_interval": max(self.session_timeout_ms / 3000, 0.5),
        }
        ctx = self.ssl_context()
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=ctx,
            )
        elif self.sasl_mechanism == "OAUTHBEARER":
            kwargs["broker_credentials"] = faust.OAuthCredentials(
                oauth_cb=self.oauth_token_provider(), ssl_context=ctx
            )
        elif ctx is not None:
            kwargs["broker_credentials"] = faust.SSLCredentials(ctx)
        return kwargs
