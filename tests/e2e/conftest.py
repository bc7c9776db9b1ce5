"""Fixtures of the end-to-end layer: both services over TLS and over mutual TLS, with certificates made at run time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mreg.blob_service import server as blob_server
from mreg.blob_service.config import BlobConfig
from mreg.client import Registry
from mreg.client.channels import Credentials, open_channel
from mreg.metadata_service import server as metadata_server
from mreg.metadata_service.config import MetadataConfig
from tests.certificates import Pki, make_pki
from tests.helpers import create_token
from tests.processes import start_authenticated


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class SecureServers:
    blob: blob_server.RunningBlobServer
    metadata: metadata_server.RunningMetadataServer
    pki: Pki

    def registry(self, credentials: Credentials) -> Registry:
        return Registry.connect(
            self.metadata.address, self.blob.address, entity="acme", project="vision", credentials=credentials
        )

    def env(self) -> dict[str, str]:
        return {"MREG_METADATA_ADDR": self.metadata.address, "MREG_BLOB_ADDR": self.blob.address}


@pytest.fixture(scope="session")
def tls_servers(database_url: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServers]:
    """Both services serving TLS only; the metadata service verifies commits with the blob service over TLS."""
    blobs = blob_server.start(
        BlobConfig(
            listen="127.0.0.1:0",
            store=str(tmp_path_factory.mktemp("tls-blobs")),
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
        )
    )
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=database_url,
            blob_addr=blobs.address,
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
            blob_ca_cert=str(pki.ca_cert),
        )
    )
    yield SecureServers(blobs, metadata, pki)
    metadata.stop(grace=None)
    blobs.stop(grace=None)


@pytest.fixture(scope="session")
def mtls_servers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServers]:
    """Both services requiring client certificates issued by the test CA; the metadata service presents one."""
    root = tmp_path_factory.mktemp("mtls")
    server_files = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(pki.ca_cert)}
    blobs = blob_server.start(BlobConfig(listen="127.0.0.1:0", store=str(root / "blobs"), **server_files))
    metadata = metadata_server.start(
        MetadataConfig(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{root / 'metadata.db'}",
            blob_addr=blobs.address,
            blob_ca_cert=str(pki.ca_cert),
            blob_client_cert=str(pki.client_cert),
            blob_client_key=str(pki.client_key),
            **server_files,
        )
    )
    yield SecureServers(blobs, metadata, pki)
    metadata.stop(grace=None)
    blobs.stop(grace=None)


@dataclass
class SecuredMtlsServers(SecureServers):
    admin_token: str = ""

    def create_token(self, name: str, role: str, scope: str) -> str:
        credentials = Credentials(
            token=self.admin_token,
            ca_cert=self.pki.ca_cert.read_bytes(),
            client_cert=self.pki.client_cert.read_bytes(),
            client_key=self.pki.client_key.read_bytes(),
        )
        with open_channel(self.metadata.address, credentials) as channel:
            return create_token(channel, name, role, scope)


@pytest.fixture(scope="session")
def secured_mtls_servers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredMtlsServers]:
    """Production-like: mutual TLS on both services and between them, and tokens required (--auth)."""
    root = tmp_path_factory.mktemp("secured-mtls")
    server_files = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(pki.ca_cert)}
    client_files = {"ca_cert": str(pki.ca_cert), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    blobs, metadata, admin = start_authenticated(
        root,
        f"sqlite:///{root / 'metadata.db'}",
        {**{f"metadata_{key}": value for key, value in client_files.items()}, **server_files},
        {**{f"blob_{key}": value for key, value in client_files.items()}, **server_files},
    )
    yield SecuredMtlsServers(blobs, metadata, pki, admin_token=admin)
    metadata.stop(grace=None)
    blobs.stop(grace=None)
