//! Who a verified client certificate says the client is: the name recorded in
//! `ingest_principal` (as `mtls:<identity>`) and logged for query callers.

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identity of a client certificate (DER, already verified against the client CA): its
/// first URI SAN (SPIFFE ids live there), else its subject CN, else its first DNS SAN, else
/// `sha256:<hex>` of the certificate, so two certificates never share an identity by accident
/// of having neither name.
pub fn client_identity(der: &[u8]) -> String {
    let fingerprint = || format!("sha256:{}", hex::encode(Sha256::digest(der)));
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return fingerprint();
    };
    let names: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let common_name = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok());
    let dns = names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some(*dns),
        _ => None,
    });
    uri.or(common_name)
        .or(dns)
        .filter(|name| !name.trim().is_empty())
        .map_or_else(fingerprint, str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn certificate(common_name: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_uri_then_common_name_then_dns_then_fingerprint() {
        let spiffe = SanType::URI("spiffe://prod/ns/otel/sa/collector".try_into().unwrap());
        let dns = SanType::DnsName("collector.prod.svc".try_into().unwrap());
        assert_eq!(
            client_identity(&certificate(Some("otel"), vec![dns.clone(), spiffe])),
            "spiffe://prod/ns/otel/sa/collector"
        );
        assert_eq!(
            client_identity(&certificate(Some("otel"), vec![dns.clone()])),
            "otel"
        );
        assert_eq!(
            client_identity(&certificate(None, vec![dns])),
            "collector.prod.svc"
        );
        let anonymous = certificate(None, vec![]);
        let identity = client_identity(&anonymous);
        assert!(identity.starts_with("sha256:") && identity.len() == 7 + 64);
        assert_ne!(identity, client_identity(&certificate(None, vec![])));
        assert!(client_identity(b"not a certificate").starts_with("sha256:"));
    }
}
