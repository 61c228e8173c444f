"""Settings shared by the auto-K estimators."""

from __future__ import annotations

# k-means restarts inside the estimators: enough for a stable vote, cheap enough for k_max ~ 50.
RESTARTS = 3
ITERS = 50
# The smallest cluster count a job accepts (JobSpec.num_clusters >= 2): a vote there is never
# censored from below, since no estimator may answer less.
K_FLOOR = 2
