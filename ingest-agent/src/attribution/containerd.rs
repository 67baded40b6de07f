//! containerd's own API: gRPC on its unix socket (`/run/containerd/containerd.sock`), the source
//! of truth for containers that neither Docker nor podman manage (`ctr`, nerdctl, Kubernetes with
//! containerd as its CRI runtime).
//!
//! A container's image is found in three steps, as `ctr` does it:
//! 1. `Containers.Get(id)` in the container's namespace → the image reference it was created from;
//! 2. `Images.Get(reference)` → the image's target: a manifest, or an index of manifests;
//! 3. `Content.Read` of the manifest (of the index's `linux/amd64` entry) → its config's digest.
//!
//! The config digest is the image id, as Docker, podman and the CRI report it — the same image
//! run by podman on one node and by containerd on another is one profile.
//!
//! Only the handful of message fields used are declared (prost skips the rest); the field numbers
//! are those of containerd's `api/services/{containers,images,content,namespaces}/v1/*.proto`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

use super::runtime_api::{ApiError, ContainerImage, normalise_image_id};

/// The gRPC metadata key that selects a containerd namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerRequest {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    container: Option<ContainerRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "3")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetImageRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetImageResponse {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ImageRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "3")]
    target: Option<Descriptor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Descriptor {
    #[prost(string, tag = "1")]
    media_type: String,
    #[prost(string, tag = "2")]
    digest: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentRequest {
    #[prost(string, tag = "1")]
    digest: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentResponse {
    #[prost(int64, tag = "1")]
    offset: i64,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListNamespacesRequest {
    #[prost(string, tag = "1")]
    filter: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListNamespacesResponse {
    #[prost(message, repeated, tag = "1")]
    namespaces: Vec<NamespaceRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamespaceRecord {
    #[prost(string, tag = "1")]
    name: String,
}

/// Connects a gRPC channel to a unix socket (the URI is ignored).
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// A blocking client of one containerd socket, for the resolver thread. It keeps its own
/// single-threaded runtime and connection, and caches image reference → image id per namespace.
pub struct Containerd {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
    channel: Mutex<Option<Channel>>,
    images: Mutex<HashMap<(String, String), String>>,
}

impl Containerd {
    pub fn new(socket: &Path) -> std::io::Result<Containerd> {
        Ok(Containerd {
            socket: socket.to_path_buf(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            channel: Mutex::new(None),
            images: Mutex::new(HashMap::new()),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn bad(&self, what: String) -> ApiError {
        ApiError::Bad {
            socket: self.socket.clone(),
            what,
        }
    }

    /// The namespaces containerd has (`default`, `k8s.io`, `moby`, …).
    pub fn namespaces(&self) -> Result<Vec<String>, ApiError> {
        let response: ListNamespacesResponse = self.unary(
            None,
            "/containerd.services.namespaces.v1.Namespaces/List",
            ListNamespacesRequest::default(),
        )?;
        Ok(response.namespaces.into_iter().map(|n| n.name).collect())
    }

    /// The image of container `id` in `namespace`.
    pub fn inspect(&self, namespace: &str, id: &str) -> Result<ContainerImage, ApiError> {
        let response: GetContainerResponse = self
            .unary(
                Some(namespace),
                "/containerd.services.containers.v1.Containers/Get",
                GetContainerRequest { id: id.to_string() },
            )
            .map_err(|e| match e {
                ApiError::NotFound { socket, .. } => ApiError::NotFound {
                    socket,
                    id: format!("{namespace}/{id}"),
                },
                other => other,
            })?;
        let container = response
            .container
            .ok_or_else(|| self.bad(format!("Containers.Get {namespace}/{id}: no container")))?;
        if container.image.is_empty() {
            return Err(self.bad(format!(
                "container {namespace}/{id} was created without an image"
            )));
        }
        let key = (namespace.to_string(), container.image.clone());
        if let Some(image) = self.images.lock().expect("image cache").get(&key) {
            return Ok(ContainerImage {
                image: image.clone(),
                image_name: container.image,
            });
        }
        let image = self.image_id(namespace, &container.image)?;
        self.images
            .lock()
            .expect("image cache")
            .insert(key, image.clone());
        Ok(ContainerImage {
            image,
            image_name: container.image,
        })
    }

    /// Image reference → the digest of its config (for linux/amd64 when it is an index).
    fn image_id(&self, namespace: &str, reference: &str) -> Result<String, ApiError> {
        let response: GetImageResponse = self.unary(
            Some(namespace),
            "/containerd.services.images.v1.Images/Get",
            GetImageRequest {
                name: reference.to_string(),
            },
        )?;
        let mut target = response
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| self.bad(format!("image {reference:?} has no target")))?;
        // An index (multi-platform image) names one manifest per platform: two levels at most.
        for _ in 0..2 {
            let blob = self.read(namespace, &target.digest)?;
            let json: serde_json::Value = serde_json::from_slice(&blob)
                .map_err(|e| self.bad(format!("{} of {reference:?}: {e}", target.digest)))?;
            let media_type = json
                .get("mediaType")
                .and_then(|v| v.as_str())
                .unwrap_or(&target.media_type)
                .to_string();
            if MANIFEST_TYPES.contains(&media_type.as_str()) || json.get("config").is_some() {
                let config = json
                    .pointer("/config/digest")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| self.bad(format!("manifest of {reference:?} has no config")))?;
                return normalise_image_id(config)
                    .ok_or_else(|| self.bad(format!("config digest {config:?} is not sha256")));
            }
            if !INDEX_TYPES.contains(&media_type.as_str()) && json.get("manifests").is_none() {
                return Err(self.bad(format!(
                    "target of {reference:?} is {media_type:?}, not a manifest or an index"
                )));
            }
            target = pick_platform(&json).ok_or_else(|| {
                self.bad(format!(
                    "index of {reference:?} has no linux/amd64 manifest"
                ))
            })?;
        }
        Err(self.bad(format!("{reference:?}: indexes nested too deep")))
    }

    /// A whole blob of the content store.
    fn read(&self, namespace: &str, digest: &str) -> Result<Vec<u8>, ApiError> {
        let path = "/containerd.services.content.v1.Content/Read";
        let request = ReadContentRequest {
            digest: digest.to_string(),
        };
        let chunks: Vec<ReadContentResponse> =
            self.call(Some(namespace), path, request, |mut grpc, path, request| {
                Box::pin(async move {
                    let mut stream = grpc
                        .server_streaming(request, path, tonic_prost::ProstCodec::default())
                        .await?
                        .into_inner();
                    let mut chunks = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        chunks.push(chunk);
                    }
                    Ok(chunks)
                })
            })?;
        let mut blob = Vec::new();
        for chunk in chunks {
            if chunk.offset as usize != blob.len() {
                return Err(self.bad(format!("{digest}: content arrived out of order")));
            }
            blob.extend_from_slice(&chunk.data);
        }
        Ok(blob)
    }

    fn unary<Req, Resp>(
        &self,
        namespace: Option<&str>,
        path: &'static str,
        request: Req,
    ) -> Result<Resp, ApiError>
    where
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        self.call(namespace, path, request, |mut grpc, path, request| {
            Box::pin(async move {
                let response = grpc
                    .unary(request, path, tonic_prost::ProstCodec::default())
                    .await?;
                Ok(response.into_inner())
            })
        })
    }

    /// Runs one call with a connected channel (connecting first if need be) and the namespace
    /// header; a broken connection is dropped so the next call connects again.
    fn call<Req, T>(
        &self,
        namespace: Option<&str>,
        path: &'static str,
        message: Req,
        run: impl FnOnce(
            tonic::client::Grpc<Channel>,
            PathAndQuery,
            tonic::Request<Req>,
        ) -> Pin<Box<dyn Future<Output = Result<T, tonic::Status>> + 'static>>,
    ) -> Result<T, ApiError> {
        let io = |source| ApiError::Io {
            socket: self.socket.clone(),
            source,
        };
        // Bound first: a guard in the match's scrutinee would live through the arms.
        let connected = self.channel.lock().expect("channel").clone();
        let channel = match connected {
            Some(channel) => channel,
            None => {
                let connector = UnixConnector(self.socket.clone());
                let channel = self
                    .runtime
                    .block_on(
                        Endpoint::from_static("http://containerd")
                            .connect_timeout(Duration::from_secs(5))
                            .timeout(Duration::from_secs(10))
                            .connect_with_connector(connector),
                    )
                    .map_err(|e| io(std::io::Error::other(e)))?;
                *self.channel.lock().expect("channel") = Some(channel.clone());
                channel
            }
        };
        let mut request = tonic::Request::new(message);
        if let Some(namespace) = namespace {
            let value = namespace
                .parse()
                .map_err(|_| self.bad(format!("namespace {namespace:?} is not a header value")))?;
            request.metadata_mut().insert(NAMESPACE_HEADER, value);
        }
        let result = self.runtime.block_on(async {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            run(grpc, PathAndQuery::from_static(path), request).await
        });
        result.map_err(|status| match status.code() {
            tonic::Code::NotFound => ApiError::NotFound {
                socket: self.socket.clone(),
                id: status.message().to_string(),
            },
            code => {
                if code == tonic::Code::Unavailable {
                    *self.channel.lock().expect("channel") = None;
                }
                self.bad(format!("{code:?}: {} ({path})", status.message()))
            }
        })
    }
}

/// The linux/amd64 manifest of an image index.
fn pick_platform(index: &serde_json::Value) -> Option<Descriptor> {
    let manifests = index.get("manifests")?.as_array()?;
    let of = |m: &serde_json::Value, key: &str| {
        m.pointer(&format!("/platform/{key}"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let chosen = manifests
        .iter()
        .find(|m| {
            of(m, "os").as_deref() == Some("linux")
                && of(m, "architecture").as_deref() == Some("amd64")
        })
        // An index without platforms (e.g. an OCI archive's own index) has one manifest.
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))?;
    Some(Descriptor {
        media_type: chosen.get("mediaType")?.as_str()?.to_string(),
        digest: chosen.get("digest")?.as_str()?.to_string(),
    })
}

/// Whether a path without a runtime's container id can still be a containerd container's
/// (`/<namespace>/<id>`), so that containerd is worth asking.
pub fn may_name_a_container(path: &str) -> bool {
    let trimmed = path.trim_matches('/');
    !trimmed.is_empty() && trimmed.split('/').count() == 2
}

/// The (namespace, container id) a cgroup path can name in containerd:
/// - `ctr` and nerdctl with the cgroupfs driver: `/<namespace>/<id>`;
/// - Kubernetes (CRI, namespace `k8s.io`): a 64-hex id found by [`super::container_id::parse`].
///
/// The first form is only a candidate: it is asked of containerd only when `<namespace>` is one
/// containerd has.
pub fn candidates(
    path: &str,
    namespaces: &[String],
    cri_id: Option<&str>,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let [namespace, id] = parts.as_slice()
        && namespaces.iter().any(|n| n == namespace)
    {
        found.push((namespace.to_string(), id.to_string()));
    }
    if let Some(id) = cri_id {
        // k8s.io first: that is where the CRI plugin keeps Kubernetes' containers.
        let mut ordered: Vec<&String> = namespaces.iter().filter(|n| *n == "k8s.io").collect();
        ordered.extend(namespaces.iter().filter(|n| *n != "k8s.io"));
        for namespace in ordered {
            let candidate = (namespace.clone(), id.to_string());
            if !found.contains(&candidate) {
                found.push(candidate);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_name_containerd_containers() {
        let ns = vec![
            "default".to_string(),
            "k8s.io".to_string(),
            "imprint".to_string(),
        ];
        assert_eq!(
            candidates("/imprint/web-1", &ns, None),
            vec![("imprint".to_string(), "web-1".to_string())]
        );
        // A host cgroup with two components is not asked about.
        assert!(candidates("/system.slice/cron.service", &ns, None).is_empty());
        let hex = "d".repeat(64);
        let path = format!("/kubepods/besteffort/pod1/{hex}");
        let got = candidates(&path, &ns, Some(&hex));
        assert_eq!(got[0], ("k8s.io".to_string(), hex.clone()));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn an_index_picks_linux_amd64() {
        let index = serde_json::json!({
            "mediaType": INDEX_TYPES[0],
            "manifests": [
                {"mediaType": MANIFEST_TYPES[0], "digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": MANIFEST_TYPES[0], "digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        });
        assert_eq!(pick_platform(&index).expect("found").digest, "sha256:amd");
        let single = serde_json::json!({"manifests": [{"mediaType": MANIFEST_TYPES[0], "digest": "sha256:one"}]});
        assert_eq!(pick_platform(&single).expect("found").digest, "sha256:one");
    }
}
