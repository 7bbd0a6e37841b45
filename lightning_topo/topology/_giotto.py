"""H1 pairs from giotto-ph, each birth and death mapped to an edge of exactly that length (private).

giotto-ph 0.2.4's ``ripser_parallel(..., return_generators=True)`` with ``n_threads > 1``
returns, for some pairs, a birth edge whose length is not the pair's birth (see
docs/topology.md, "giotto-ph's multi-threaded generators"). Its diagram ``dgms`` is right at
every thread count, so the engine takes the diagram and finds, in the very float32 matrix it
handed to giotto-ph, an edge whose entry equals each birth and each death. Every value of the
diagram is an entry of that matrix, so the search always succeeds; when several edges have
the same length (a tie) any of them is taken, which gives a valid subgradient.
"""

from __future__ import annotations

import numpy as np

__all__ = ["h1_pairs", "edges_with_values"]

_BLOCK_ENTRIES = 1 << 20  # entries scanned at a time by edges_with_values (bounds its memory)


def edges_with_values(matrix: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of the sorted, distinct ``values`` ``(k,)``, one edge ``(i, j)``, ``i < j``, with
    ``matrix[i, j] == values[t]``; returns ``(k, 2)`` int64, ``-1`` where there is none.

    ``matrix`` is read as symmetric: one pass over its upper triangle in blocks of rows, each
    entry located among the ``values`` by binary search: ``O(n^2 log k)`` time and memory
    bounded by a block; measured cheaper than sorting the ``n (n - 1) / 2`` entries
    (docs/topology.md).
    """
    n = matrix.shape[0]
    found = np.full((len(values), 2), -1, dtype=np.int64)
    if len(values) == 0:
        return found
    rows = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, n, rows):
        block = matrix[start : start + rows, start:]  # upper triangle and diagonal of these rows
        slot = np.searchsorted(values, block).clip(max=len(values) - 1)
        ii, jj = np.nonzero(values[slot] == block)
        above = jj > ii  # off the diagonal (column start + jj, row start + ii)
        ii, jj = ii[above], jj[above]
        found[slot[ii, jj], 0] = ii + start  # later hits overwrite earlier ones: any edge is fine
        found[slot[ii, jj], 1] = jj + start
    return found


def h1_pairs(matrix: np.ndarray, n_threads: int) -> np.ndarray:
    """Finite H1 pairs of the VR filtration of ``matrix`` as edges: ``(m, 4)`` int64 rows
    ``(a, b, c, d)``, with ``matrix[a, b]`` the birth and ``matrix[c, d]`` the death of a
    pair of giotto-ph's diagram (zero-length pairs dropped).

    Args:
        matrix: ``(n, n)`` float32 C-contiguous, symmetric, zero diagonal, finite.
        n_threads: giotto-ph threads (any count: the diagram is exact at every count).
    """
    from gph import ripser_parallel

    result = ripser_parallel(matrix, maxdim=1, metric="precomputed", n_threads=n_threads)
    dgm = np.asarray(result["dgms"][1], dtype=np.float32).reshape(-1, 2)
    dgm = dgm[np.isfinite(dgm).all(axis=1) & (dgm[:, 1] > dgm[:, 0])]
    values, where = np.unique(dgm.ravel(), return_inverse=True)
    edges = edges_with_values(matrix, values)
    missing = (edges < 0).any(axis=1)
    if missing.any():  # a matrix symmetric only up to rounding: giotto-ph read the other triangle
        edges[missing] = edges_with_values(matrix.T, values[missing])[:, ::-1]
    if len(values) and int(edges.min()) < 0:
        missing = values[(edges < 0).any(axis=1)][:5].tolist()
        raise RuntimeError(
            f"giotto-ph returned H1 values that are not entries of its input matrix: {missing}. "
            "Please report this with the input that caused it"
        )
    return edges[where.reshape(-1)].reshape(-1, 4)
