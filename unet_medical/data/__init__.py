"""Data stage: read files (readers), find a data set's layout (layouts), normalize, split folds,
stream crops (pipeline), augment (augment, warp) and generate synthetic data sets (synthetic)."""
