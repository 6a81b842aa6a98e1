"""The `autlearn` command line: click modules that parse options and call one library function each. Library code
never imports this package."""
