"""Testbeds: the exact Gaussian-mixture model (:mod:`.gmm`), the digits data, UNet and classifier
(:mod:`.digits`), and the training of the shipped networks (:mod:`.train`). Submodules are imported on demand."""
