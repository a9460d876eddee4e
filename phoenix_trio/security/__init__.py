"""Message-level and transport-level security (the design's ``Phoenix.Security``).

Message level::

    from phoenix_trio import security as sec

    ring = sec.KeyRing([sec.SymmetricKey.generate("k1")])
    signer = sec.SigningKey.generate("s1")                         # ECDSA P-256
    trust = sec.TrustStore(agents=["planner"], keys=[signer.public_key("planner")])
    policy = sec.SecurityPolicy(classes={"control_plane": sec.ENCRYPT_AND_SIGN})
    ctx = sec.SecurityContext("planner", ring, trust, policy, sec.KeyRing([signer]))

    secured = sec.secure_message(message, ctx)        # authenticate, encrypt, sign
    plain = sec.verify_message(secured, receiver_ctx)  # or a SecurityError subclass

Nodes enforce it: ``open_node(..., security=ctx)`` secures what the policy requires on
the way out and verifies on the way in, before any agent sees a message (see
``docs/security.md``). Transport level: ``open_node(..., tls=configure_tls(...))`` runs
the native TCP transport over TLS 1.3/1.2 with mutual authentication.
"""

from ._aead import AEAD_ALGORITHMS as AEAD_ALGORITHMS
from ._aead import AES_256_GCM as AES_256_GCM
from ._aead import CHACHA20_POLY1305 as CHACHA20_POLY1305
from ._canonical import associated_data as associated_data
from ._canonical import canonical_bytes as canonical_bytes
from ._context import SecurityContext as SecurityContext
from ._errors import AuthenticationFailed as AuthenticationFailed
from ._errors import BadSignature as BadSignature
from ._errors import DecryptionFailed as DecryptionFailed
from ._errors import ExpiredKey as ExpiredKey
from ._errors import MalformedSecurity as MalformedSecurity
from ._errors import MessageRejected as MessageRejected
from ._errors import MessageSecurityError as MessageSecurityError
from ._errors import NoActiveKey as NoActiveKey
from ._errors import PeerIdentityError as PeerIdentityError
from ._errors import PolicyViolation as PolicyViolation
from ._errors import ReplayDetected as ReplayDetected
from ._errors import TimestampOutOfWindow as TimestampOutOfWindow
from ._errors import TlsError as TlsError
from ._errors import UnknownAgent as UnknownAgent
from ._errors import UnknownKey as UnknownKey
from ._errors import UntrustedSigner as UntrustedSigner
from ._gate import EVENT_TYPE as REJECTION_EVENT_TYPE
from ._gate import SecurityGate as SecurityGate
from ._keys import ECDSA_P256 as ECDSA_P256
from ._keys import ED25519 as ED25519
from ._keys import SIGNATURE_ALGORITHMS as SIGNATURE_ALGORITHMS
from ._keys import KeyRing as KeyRing
from ._keys import SigningKey as SigningKey
from ._keys import SymmetricKey as SymmetricKey
from ._keys import TrustedKey as TrustedKey
from ._keys import TrustStore as TrustStore
from ._policy import AUTHENTICATE as AUTHENTICATE
from ._policy import ENCRYPT as ENCRYPT
from ._policy import ENCRYPT_AND_SIGN as ENCRYPT_AND_SIGN
from ._policy import NONE as NONE
from ._policy import SIGN as SIGN
from ._policy import Protection as Protection
from ._policy import SecurityPolicy as SecurityPolicy
from ._replay import ReplayGuard as ReplayGuard
from ._secure import secure_message as secure_message
from ._secure import verify_message as verify_message
from ._tls import ALPN_PROTOCOL as ALPN_PROTOCOL
from ._tls import SECURE_CIPHERS as SECURE_CIPHERS
from ._tls import TlsConfig as TlsConfig
from ._tls import TlsOptions as TlsOptions
from ._tls import configure_tls as configure_tls
