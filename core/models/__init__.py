"""Model files: conversion to the original Stable Diffusion layout and single-file checkpoints."""
