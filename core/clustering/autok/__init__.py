"""Automatic cluster count (``base.auto_k`` of the spec): five estimators vote, a consensus decides.

Every estimator runs on the same seeded random sample of at most ``sample_cap`` rows of the
features; its vote is clipped to [k_min, k_max] (and to the sample size).

silhouette  (silhouette.py) k-means for every k in range; the k with the largest mean silhouette.
eigengap    (spectral.py) largest gap of the normalised Laplacian's spectrum of a self-tuning kNN
            graph (Zelnik-Manor & Perona 2004).
xmeans      (splitting.py) X-means (Pelleg & Moore 2000): BIC-guided 2-splits from k_min.
gmeans      (splitting.py) G-means (Hamerly & Elkan 2003): Anderson-Darling-guided 2-splits.
dpmeans     (dpmeans.py) DP-means (Kulis & Jordan 2012) over a lambda grid; the longest-lived count.
consensus   (consensus.py) a vote at a bound of the range is censored and abstains (the estimator
            was cut off there, it did not choose the bound); the spec's median or mode over the
            rest; when every vote is censored, the same rule over all clipped votes, flagged.
"""

from core.clustering.autok.consensus import AutoKResult, Vote, censor, consensus_vote, decide
from core.clustering.autok.dpmeans import dpmeans, dpmeans_k
from core.clustering.autok.estimate import estimate_k
from core.clustering.autok.silhouette import silhouette_k, silhouette_score
from core.clustering.autok.spectral import eigengap_k, spectral_embedding
from core.clustering.autok.splitting import anderson_darling, gmeans_k, split_search, xmeans_k

__all__ = [
    "AutoKResult",
    "Vote",
    "anderson_darling",
    "censor",
    "consensus_vote",
    "decide",
    "dpmeans",
    "dpmeans_k",
    "eigengap_k",
    "estimate_k",
    "gmeans_k",
    "silhouette_k",
    "silhouette_score",
    "spectral_embedding",
    "split_search",
    "xmeans_k",
]
