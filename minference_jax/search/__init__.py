"""Offline kernel-aware pattern search (MInference, Jiang et al., 2024,
section 3.2, Alg. 1): per layer, every head gets the candidate pattern
whose attention best matches dense attention at a common kernel cost."""

from minference_jax.search.change_space import change_space as change_space
from minference_jax.search.cost import a_shape_tiles as a_shape_tiles
from minference_jax.search.cost import block_sparse_tiles as block_sparse_tiles
from minference_jax.search.cost import dense_tiles as dense_tiles
from minference_jax.search.cost import (
    vertical_slash_tiles as vertical_slash_tiles,
)
from minference_jax.search.estimate import HeadEstimates as HeadEstimates
from minference_jax.search.estimate import head_estimates as head_estimates
from minference_jax.search.keysets import KeySets as KeySets
from minference_jax.search.keysets import PatternArrays as PatternArrays
from minference_jax.search.keysets import build_keysets as build_keysets
from minference_jax.search.keysets import kernel_tiles as kernel_tiles
from minference_jax.search.keysets import pattern_arrays as pattern_arrays
from minference_jax.search.layer import LayerSearch as LayerSearch
from minference_jax.search.layer import NonFiniteInput as NonFiniteInput
from minference_jax.search.layer import SearchSettings as SearchSettings
from minference_jax.search.layer import adjust_candidates as adjust_candidates
from minference_jax.search.layer import check_finite as check_finite
from minference_jax.search.layer import check_target as check_target
from minference_jax.search.layer import (
    measure_patterns as measure_patterns,
)
from minference_jax.search.layer import score_patterns as score_patterns
from minference_jax.search.layer import search_layer as search_layer
from minference_jax.search.layer import target_tiles as target_tiles
from minference_jax.search.score import Scores as Scores
from minference_jax.search.score import score_keysets as score_keysets
from minference_jax.search.score import tile_share as tile_share
from minference_jax.search.space import CostTarget as CostTarget
from minference_jax.search.space import SearchSpace as SearchSpace
