"""Adapters for the libraries a user would pick instead of pysteer (bench only, not the library).

Each adapter steers the same :class:`~bench.peers.base.Material` its library's way; the
benchmark checks it against the pysteer row of the same edit before timing it.

    Unsteered, PysteerDense, PysteerSAE          the baseline and the references
    SteeringVectorsPeer, RepengPeer, NnsightPeer  the dense vector
    SaeLens{Hook,Bridge}Peer, HookedSAETransformerPeer   the SAE edit with the error term
    EasySteerPeer                                 no released code to run (a row saying why)
"""

from .base import (Material, Peer, Runner, hf_runner, make_material, package_version, random_sae_lens,
                   word_tokenizer)
from .check import check_equal
from .easysteer_peer import EasySteerPeer
from .nnsight_peer import NnsightPeer
from .reference import PysteerDense, PysteerSAE, Unsteered
from .repeng_peer import RepengPeer
from .sae_lens_peer import (HookedSAETransformerPeer, SaeLensBridgeCachedPeer, SaeLensBridgePeer,
                            SaeLensHookPeer)
from .steering_vectors_peer import SteeringVectorsPeer

REFERENCE = {"dense": PysteerDense, "sae": PysteerSAE}
LIBRARY_PEERS = (SteeringVectorsPeer, RepengPeer, NnsightPeer, SaeLensHookPeer, SaeLensBridgePeer,
                 SaeLensBridgeCachedPeer, HookedSAETransformerPeer, EasySteerPeer)

__all__ = ["Material", "make_material", "Peer", "Runner", "hf_runner", "package_version", "random_sae_lens", "word_tokenizer",
           "check_equal", "Unsteered", "PysteerDense", "PysteerSAE", "SteeringVectorsPeer", "RepengPeer",
           "NnsightPeer", "SaeLensHookPeer", "SaeLensBridgePeer", "SaeLensBridgeCachedPeer", "HookedSAETransformerPeer", "EasySteerPeer",
           "REFERENCE", "LIBRARY_PEERS"]
