"""canon.layers"""
from canon.layers.attention import MultiHeadAttention, SelfAttention, scaled_dot_product_attention  # noqa: F401
from canon.layers.conv import (  # noqa: F401
    Conv2d, ConvTranspose2d, DepthwiseSeparableConv1d, DepthwiseSeparableConv2d, ResizeConv2d, conv1x1, conv2d,
    conv_output_size, conv_transpose2d, conv_transpose_output_size,
)
from canon.layers.deform_conv import DeformConv2d, bilinear_gather, deform_conv2d, deform_sampling_points  # noqa: F401
from canon.layers.recurrent import GRU, LSTM, RNN, gru_cell, lstm_cell, rnn_relu_cell, rnn_tanh_cell  # noqa: F401
from canon.layers.pooling import (  # noqa: F401
    AvgPool2d, GlobalAvgPool2d, MaxPool2d, SoftPool2d, SpatialPyramidPool, StochasticPool2d, adaptive_bins,
    avg_pool2d, global_avg_pool2d, max_pool2d, overlapping_max_pool2d, soft_pool2d, spatial_pyramid_pool,
    spp_paper_bins, stochastic_pool2d,
)
from canon.layers.norms import (  # noqa: F401
    BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm, LocalResponseNorm, batch_norm, group_norm, instance_norm,
    layer_norm, local_response_norm,
)
from canon.layers.activations import (  # noqa: F401
    Dropout, LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh, dropout, leaky_relu, relu, relu6, sigmoid, tanh,
)
