"""A small model zoo for tests, experiments and docs, in Linen and NNX.

Compact definitions written with stock Flax modules, named the way the recipes in
:mod:`flaxinit.recipes` expect by default. Every family has a Linen class and an NNX
class (``NNX`` prefix) with the same parameter names; small by default, configurable.
Nonlinearities are bare function calls (``nn.relu(x)``), as in most Flax code: the
diagnostics read them from the model's jaxpr (:mod:`flaxinit.diagnostics.inferred`).

=====================  ==========================  =========================================
Linen                  NNX                         what
=====================  ==========================  =========================================
``MLP``                ``NNXMLP``                  ``hidden_i`` / ``hidden/i``, ``head``
``ConvNet``            ``NNXConvNet``              ``conv_i`` / ``conv/i`` (3x3 SAME),
                                                   ``head``
``ResNet``             ``NNXResNet``               basic blocks; ``norm``, ``gate`` = none,
                                                   rezero (``alpha``), fixup
``GPT``                ``NNXGPT``                  decoder; ``scan`` stacks the blocks
``ViT``                ``NNXViT``                  patch conv, ``cls``, ``pos_embedding``
``LSTMClassifier``     ``NNXLSTMClassifier``       ``nn.RNN`` over ``LSTMCell`` /
                                                   ``OptimizedLSTMCell``
``Generator``,         ``NNXGenerator``,           DCGAN pair
``Discriminator``      ``NNXDiscriminator``
=====================  ==========================  =========================================
"""

from flaxinit.models.convnet import ConvNet, NNXConvNet
from flaxinit.models.dcgan import Discriminator, Generator, NNXDiscriminator, NNXGenerator
from flaxinit.models.gpt import GPT, NNXGPT, Block, NNXBlock
from flaxinit.models.lstm import LSTMClassifier, NNXLSTMClassifier
from flaxinit.models.mlp import MLP, NNXMLP
from flaxinit.models.resnet import NNXResNet, ResNet
from flaxinit.models.vit import NNXViT, ViT

__all__ = [
    "GPT",
    "MLP",
    "NNXGPT",
    "NNXMLP",
    "Block",
    "ConvNet",
    "Discriminator",
    "Generator",
    "LSTMClassifier",
    "NNXBlock",
    "NNXConvNet",
    "NNXDiscriminator",
    "NNXGenerator",
    "NNXLSTMClassifier",
    "NNXResNet",
    "NNXViT",
    "ResNet",
    "ViT",
]
