"""Building blocks of the point-cloud networks: embeddings of time and coordinates, a coarse voxel
grid (cell means in, trilinear interpolation out), induced-set attention, k-nearest-neighbour
graphs, and the PointNet and EdgeConv encoders of the classifiers.

Every block maps clouds ``(B, N, C)`` with the same N for every cloud of a batch (no masks), treats
the points as a set (permutation-equivariant per point, or invariant after pooling), and runs on any N.
"""
from shapectrl.networks.attention import InducedSetAttention
from shapectrl.networks.edgeconv import EdgeConvEncoder, EdgeConvLayer
from shapectrl.networks.embedding import (
    ContextEmbedding,
    fourier_features,
    sinusoidal_embedding,
)
from shapectrl.networks.knn import gather_neighbours, knn_indices, neighbourhood_max
from shapectrl.networks.pointnet import PointNetEncoder, symmetric_pool
from shapectrl.networks.voxels import VoxelGrid, Voxelisation, devoxelise, voxelise

__all__ = [
    "ContextEmbedding", "EdgeConvEncoder", "EdgeConvLayer", "InducedSetAttention", "PointNetEncoder", "VoxelGrid",
    "Voxelisation", "devoxelise", "fourier_features", "gather_neighbours", "knn_indices", "neighbourhood_max",
    "sinusoidal_embedding", "symmetric_pool", "voxelise",
]
