"""SHA-256 whose running state can be saved and restored, for uploads continued elsewhere.

An upload staged as the parts of an S3 multipart upload cannot be read back before it is completed, so a
replica continuing it (or this one after a restart) cannot hash its bytes again. It restores the hash state
saved with the last part instead. ``hashlib`` keeps its state private; OpenSSL's SHA256_CTX, the state of
the SHA-256 ``hashlib`` usually runs on, is a plain public struct, so through ctypes OpenSSL hashes at
``hashlib``'s speed and its state is 112 bytes that can be stored. Where the C library does not offer it,
``resumable`` is False and ``Sha256`` is ``hashlib``'s, whose state cannot be saved: callers keep bytes that
can be read back instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
from typing import Any


class _Context(ctypes.Structure):
    # openssl/sha.h: SHA256_CTX, stable since OpenSSL 0.9.8.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


# A saved state names its layout, so a replica on another build refuses it rather than misreading it.
_STATE_TAG = b"sha256-ctx-v1-" + sys.byteorder.encode() + b":"


def _load_libcrypto() -> Any | None:
    if sys.platform == "darwin":
        return None  # macOS's own libcrypto aborts a process that loads it; hashlib's is not reachable by name
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"):
        if not name:
            continue
        try:
            library = ctypes.CDLL(name)
            for function in (library.SHA256_Init, library.SHA256_Update, library.SHA256_Final):
                function.restype = ctypes.c_int
            library.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            library.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            library.SHA256_Init.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            continue
        if _known_answer(library):
            return library
    return None


def _known_answer(library: Any) -> bool:
    """True if the library hashes as hashlib does, through a saved and restored state."""
    context = _Context()
    library.SHA256_Init(ctypes.byref(context))
    library.SHA256_Update(ctypes.byref(context), b"mreg" * 20, 80)
    restored = _Context.from_buffer_copy(bytes(context))
    library.SHA256_Update(ctypes.byref(restored), b"!", 1)
    out = ctypes.create_string_buffer(32)
    library.SHA256_Final(out, ctypes.byref(restored))
    return out.raw == hashlib.sha256(b"mreg" * 20 + b"!").digest()


_LIBCRYPTO = _load_libcrypto()
resumable = _LIBCRYPTO is not None


class StateRefused(ValueError):
    """A saved state this build cannot continue (another layout, or damaged)."""


class Sha256:
    """hashlib.sha256's ``update``/``hexdigest``, plus ``state()`` and ``Sha256.restore(state)``."""

    def __init__(self) -> None:
        if _LIBCRYPTO is None:
            self._hashlib: Any = hashlib.sha256()
            return
        self._hashlib = None
        self._context = _Context()
        _LIBCRYPTO.SHA256_Init(ctypes.byref(self._context))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._hashlib is not None:
            self._hashlib.update(data)
            return
        if not isinstance(data, bytes):
            view = memoryview(data).cast("B")  # refuses a non-contiguous view, as hashlib does
            if view.readonly:
                data = bytes(view)  # ctypes lends only writable buffers' addresses
            else:
                buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
                _LIBCRYPTO.SHA256_Update(ctypes.byref(self._context), buffer, view.nbytes)  # type: ignore[union-attr]
                return
        _LIBCRYPTO.SHA256_Update(ctypes.byref(self._context), data, len(data))  # type: ignore[union-attr]

    def hexdigest(self) -> str:
        if self._hashlib is not None:
            return str(self._hashlib.hexdigest())
        finished = _Context.from_buffer_copy(bytes(self._context))  # a copy: hashing may go on
        out = ctypes.create_string_buffer(32)
        _LIBCRYPTO.SHA256_Final(out, ctypes.byref(finished))  # type: ignore[union-attr]
        return out.raw.hex()

    def state(self) -> bytes | None:
        """The running state, to ``restore`` later (on any replica of the same build); None if not resumable."""
        if self._hashlib is not None:
            return None
        return _STATE_TAG + bytes(self._context)

    @classmethod
    def restore(cls, state: bytes) -> Sha256:
        """A hasher continuing from a saved ``state``.

        Raises:
            StateRefused: this build cannot continue it.
        """
        if _LIBCRYPTO is None or not state.startswith(_STATE_TAG):
            raise StateRefused("the saved hash state is of another build")
        raw = state[len(_STATE_TAG) :]
        if len(raw) != ctypes.sizeof(_Context):
            raise StateRefused(f"the saved hash state is {len(raw)} bytes, not {ctypes.sizeof(_Context)}")
        hasher = cls()
        hasher._context = _Context.from_buffer_copy(raw)
        if hasher._context.md_len != 32 or hasher._context.num >= 64:
            raise StateRefused("the saved hash state is damaged")
        return hasher
