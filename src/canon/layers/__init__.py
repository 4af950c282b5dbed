"""canon.layers"""
from canon.layers.attention import MultiHeadAttention, SelfAttention, scaled_dot_product_attention  # noqa: F401
