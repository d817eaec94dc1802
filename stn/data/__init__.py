from stn.data.mnist import MNIST_MEAN, MNIST_STD, DistortedMNISTDataModule, MNISTDataError, MNISTDataModule

__all__ = ["MNIST_MEAN", "MNIST_STD", "DistortedMNISTDataModule", "MNISTDataError", "MNISTDataModule"]
