"""The method: CIDD (cidd), NRR (nrr), DBR relabeling (relabel) and the distill pipeline."""
