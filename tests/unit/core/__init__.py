"""Tests of appo.core."""
