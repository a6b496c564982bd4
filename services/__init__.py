"""Example services that ship with rpc, each written as a user would write it."""
