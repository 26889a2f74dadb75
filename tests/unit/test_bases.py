"""The principal-component basis of a PCA index (shared/db/bases.py): numbers only."""

from __future__ import annotations

import numpy as np
import pytest

from shared.db.bases import REFIT_BELOW, drift, fit_basis


def _planted(rows: int, dim: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows near a rank-``rank`` subspace (decreasing spread per axis) off a common mean, and
    an orthonormal basis of that subspace (rank × dim)."""
    rng = np.random.default_rng(seed)
    span = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T
    latent = rng.standard_normal((rows, rank)) * np.linspace(5, 2, rank)
    mean = rng.standard_normal(dim)
    return mean + latent @ span + 0.01 * rng.standard_normal((rows, dim)), span


def test_the_basis_finds_the_subspace_the_vectors_lie_in() -> None:
    x, span = _planted(2_000, 48, 6, seed=1)
    basis = fit_basis(x, 6)
    assert basis.axes.shape == (48, 6) and basis.mean.shape == (48,)
    assert basis.axes.dtype == np.float32 == basis.mean.dtype
    # Orthonormal axes, and the same subspace: every principal angle near zero.
    assert np.allclose(basis.axes.T @ basis.axes, np.eye(6), atol=1e-5)
    cosines = np.linalg.svd(span @ basis.axes, compute_uv=False)
    assert cosines.min() > 0.999, cosines
    # Leading axes first: the first component carries the most spread.
    spread = basis.project(x).astype(np.float32).std(axis=0)
    assert list(spread) == sorted(spread, reverse=True)
    # A projection keeps the vectors' distances within the subspace (the noise is tiny).
    p = basis.project(x[:50]).astype(np.float64)
    d_full = np.linalg.norm(x[:50, None] - x[None, :50], axis=2)
    d_proj = np.linalg.norm(p[:, None] - p[None, :], axis=2)
    assert np.abs(d_full - d_proj).max() < 0.05 * d_full.max()


def test_two_samples_of_the_same_vectors_give_the_same_subspace() -> None:
    x, _ = _planted(4_000, 24, 6, seed=2)
    a, b = fit_basis(x[:2_000], 6), fit_basis(x[2_000:], 6)
    cosines = np.linalg.svd(a.axes.T @ b.axes, compute_uv=False)
    assert cosines.min() > 0.999, cosines
    one = a.project(x[0])
    assert one.shape == (6,) and one.dtype == np.float16
    assert np.allclose(one, a.project(x[:1])[0])


def test_a_basis_needs_components_the_vectors_have() -> None:
    x, _ = _planted(100, 16, 3, seed=3)
    with pytest.raises(ValueError, match="cannot fit 17 components"):
        fit_basis(x, 17)
    with pytest.raises(ValueError, match="cannot fit 0 components"):
        fit_basis(x, 0)


def test_drift_tells_a_basis_the_collection_has_outgrown_from_one_that_still_fits() -> None:
    """A collection whose first documents are about one thing (rows near one 3-dimensional
    subspace) and whose later ones are about two (half near another): the basis fitted on the
    first rows keeps far less of the grown collection's variance than a fresh one would; a basis
    fitted on a sample of the grown collection scores about 1."""
    first, _ = _planted(4_000, 32, 3, seed=4)
    other, _ = _planted(4_000, 32, 3, seed=5)
    rng = np.random.default_rng(6)
    grown = np.vstack([first, other])[rng.permutation(8_000)]
    early = fit_basis(first[:2_000], 6)
    assert early.kept_variance(first[2_000:]) > 0.999  # it fits what it was fitted on
    stale = drift(early, grown[:4_000])
    assert stale < 0.7, stale
    fits = drift(fit_basis(grown[4_000:], 6), grown[:4_000])
    assert REFIT_BELOW <= fits < 1.05, fits
