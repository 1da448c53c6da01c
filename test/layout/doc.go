// Package layout holds the tests that keep the repository's shape: its
// top-level folders, package docs, downward dependencies and file lengths.
package layout
