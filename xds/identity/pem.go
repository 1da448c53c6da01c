package identity

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// maxPEM bounds what the parsers read: a CA chain or bundle is a few KiB;
// anything near this is not one.
const maxPEM = 1 << 20

// parseCerts reads one or more CERTIFICATE blocks. Errors name what was
// being read and the block's position, never its content.
func parseCerts(what string, data []byte) ([]*x509.Certificate, error) {
	if len(data) > maxPEM {
		return nil, fmt.Errorf("%s: %d bytes is more than the %d a certificate chain may have", what, len(data), maxPEM)
	}
	var certs []*x509.Certificate
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %d is a %q, want CERTIFICATE", what, n, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %w", what, n, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block found", what)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%s: %d bytes after the last certificate are not PEM", what, len(bytes.TrimSpace(rest)))
	}
	return certs, nil
}

// parseKey reads one private key block (PKCS #8, SEC 1 "EC PRIVATE KEY" or
// PKCS #1 "RSA PRIVATE KEY"). Its errors never quote the key.
func parseKey(data []byte) (crypto.Signer, error) {
	if len(data) > maxPEM {
		return nil, fmt.Errorf("private key: %d bytes is more than the %d a key may have", len(data), maxPEM)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("private key: no PEM block found")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("private key: more than one PEM block")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("private key: PEM block is a %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		// The x509 parsers' errors describe the structure, not the bytes.
		return nil, fmt.Errorf("private key: parsing %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key: a %T cannot sign", key)
	}
	return signer, nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key as PKCS #8: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
