from stn.data.mnist import MNIST_MEAN, MNIST_STD, DistortedMNISTDataModule, MNISTDataModule
from stn.data.mnist_files import MNISTDataError

__all__ = ["MNIST_MEAN", "MNIST_STD", "DistortedMNISTDataModule", "MNISTDataError", "MNISTDataModule"]
