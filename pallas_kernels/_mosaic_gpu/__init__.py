"""The Mosaic GPU (Hopper) core of the sparse attention kernels (private).

One FlashAttention-3-style pipeline (Shah et al. 2024: warp-specialised
producer and consumers, TMA copies into SMEM rings, wgmma) that every sparse
pattern of `pallas_kernels/<op>/pallas_mosaic_gpu.py` drives through a plan of
key tiles per 64-row query block:
- `config`: the launch knobs (`Config`), the profiler option (`Profile`),
  the input checks;
- `plans`: tile plans (`TilePlan`, `Segment`, mask functions);
- `stream`: stream plans (tiles in order, 8-row chunks gathered into tiles);
- `softmax`: score masks, the online-softmax update, the seed merge;
- `cta`: what the warpgroups of a CTA share;
- `consumer`, `producer`: the compute and the copy warpgroups;
- `pipeline`: `tile_list_attention`, the launch.
"""
