import type { Host, HostStat } from './host.js';
import { blobProperties, displayLocation, openAzureLocation, pageBlobClient } from './azure-location.js';
import { urlContained, urlPaths } from './url-paths.js';

/**
 * Azure page blobs (`azure://CONTAINER/BLOB` with AZURE_STORAGE_CONNECTION_STRING,
 * `https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS`, Azurite's
 * `http://127.0.0.1:PORT/devstoreaccount1/…`): read-only image sources
 * (io/azure-location.ts); new blobs are written by the page-blob upload
 * (ops/azure-upload.ts), never through open(). Names and folders are a URL's
 * (a page blob holds a fixed VHD, which records no parent).
 */
export const azureHost: Host = {
  name: 'Azure page blob',
  open: (location, options) => openAzureLocation(location, options),
  paths: urlPaths,
  // The SAS is a credential, not part of which blob it is.
  identity: async (location) => displayLocation(location),
  async stat(location): Promise<HostStat | undefined> {
    const props = await blobProperties(await pageBlobClient(location), displayLocation(location));
    return props && { size: props.length };
  },
  contained: urlContained,
};
