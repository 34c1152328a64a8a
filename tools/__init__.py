"""Build tools of the checkout (package, man page, completions): not part of the product."""
